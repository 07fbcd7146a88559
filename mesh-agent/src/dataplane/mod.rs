//! The node's data plane: loads and attaches the BPF programs, pins their
//! maps under a per-daemon bpffs directory, and programs the maps from a
//! declarative [`desired::Desired`] state.

pub mod desired;
pub mod maglev;
pub mod maps;
pub mod programmed;
pub mod sync;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfError, EbpfLoader};
use mesh_common::*;

use self::desired::Desired;
use self::maps::Maps;
use self::programmed::Programmed;
pub use self::sync::ApplyReport;

/// The BPF object, built by `cargo xtask build-ebpf` and committed.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/apiary-mesh.bpf.o");

/// Our TC filters sit at a fixed priority and handle, so a restarted agent
/// finds and replaces them in place (no window without a program).
const TC_PRIORITY: u16 = 0xa1;
const TC_HANDLE: TcHandle = TcHandle::new(0, 1);

/// Where daemons pin their maps by default: `PIN_ROOT/<node>`.
pub const PIN_ROOT: &str = "/sys/fs/bpf/apiary";

/// Service names by id, beside the maps (bpffs holds only BPF objects).
const NAMES_FILE: &str = "lb-service-names.json";
/// Each network's bit in the membership sets, beside the maps.
const NET_INDEX_FILE: &str = "net-index.json";

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the BPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("attaching {program} to interface {iface}: {source}")]
    Attach {
        program: &'static str,
        iface: String,
        source: ProgramError,
    },
    #[error("opening pinned map {path}: {source} (is an agent's data plane pinned there? see --pin-path)")]
    OpenMap {
        path: PathBuf,
        source: aya::maps::MapError,
    },
    #[error("mapping {path} into memory: {source}")]
    Mmap {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("updating map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("no free service slot: raise --max-services (needs a fresh --pin-path)")]
    TooManyServices,
    #[error("service `{service}` lists {count} backends; at most {max} are supported", max = MAX_BACKENDS_PER_SERVICE)]
    TooManyBackendsInService { service: String, count: usize },
    #[error("no free backend id: raise --max-backends (needs a fresh --pin-path)")]
    TooManyBackends,
    #[error("tasks here are on more than {max} networks; the data plane numbers at most that many", max = MAX_NET_INDEX)]
    TooManyNetworks,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl DataplaneError {
    pub fn map(name: &'static str, source: aya::maps::MapError) -> Self {
        DataplaneError::Map { name, source }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// bpffs directory for this daemon's maps.
    pub pin_path: PathBuf,
    /// Directory for the agent's own files.
    pub data_dir: PathBuf,
    pub max_services: u32,
    /// Backend ids to reserve.
    pub max_backends: u32,
    /// Underlay interface (gets `apiary_host_ingress`).
    pub host_iface: String,
    /// Host-side task veths start with this (get `apiary_task_ingress`).
    pub task_prefix: String,
}

pub struct Dataplane {
    opts: Options,
    maps: Maps,
    programmed: Programmed,
    ebpf: Ebpf,
    /// Task links with our program, by (name, ifindex): a task that is
    /// restarted gets a new link under the same name.
    task_links: HashSet<(String, u32)>,
    /// True when maps from an earlier agent were found and re-adopted.
    pub adopted: bool,
}

impl Dataplane {
    /// Loads the programs (re-using maps already pinned under
    /// `opts.pin_path`), attaches them and reads back what is programmed.
    pub fn start(opts: Options) -> Result<Self, DataplaneError> {
        let mut dp = Self::load(opts)?;
        attach(
            &mut dp.ebpf,
            PROG_HOST_INGRESS,
            &dp.opts.host_iface,
            TcAttachType::Ingress,
        )?;
        dp.scan_task_links()?;
        Ok(dp)
    }

    /// Loads and pins without attaching anything (packet-level tests run
    /// the programs with `BPF_PROG_TEST_RUN`).
    pub fn load(opts: Options) -> Result<Self, DataplaneError> {
        ensure_bpffs()?;
        std::fs::create_dir_all(&opts.pin_path)?;
        std::fs::create_dir_all(&opts.data_dir)?;
        let adopted = opts.pin_path.join(MAP_CONFIG).exists();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&opts.pin_path)
            .map_max_entries(MAP_LB_MAGLEV, opts.max_services * MAGLEV_HALVES * MAGLEV_M)
            .map_max_entries(MAP_SVC_STATS, opts.max_services)
            .map_max_entries(MAP_LB_BACKENDS, opts.max_backends)
            .map_max_entries(
                MAP_LB_SVC_BACKENDS,
                opts.max_services * MAX_BACKENDS_PER_SERVICE,
            )
            .map_max_entries(
                MAP_LB4_SERVICES,
                opts.max_services * LB4_ENTRIES_PER_SERVICE,
            )
            .map_max_entries(MAP_BACKEND_STATS, opts.max_backends)
            .map_max_entries(MAP_TASK_NETSETS4, opts.max_backends)
            .load(OBJECT)?;
        for name in [
            PROG_HOST_INGRESS,
            PROG_TASK_INGRESS,
            PROG_TASK_EGRESS,
            PROG_OVERLAY_INGRESS,
            PROG_OVERLAY_INGRESS_L2,
        ] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        let maps = Maps::open_pinned(&opts.pin_path)?;
        let programmed = if adopted {
            Programmed::read(
                &maps,
                &read_names(&opts.data_dir),
                read_json(&opts.data_dir.join(NET_INDEX_FILE)),
            )?
        } else {
            Programmed::empty(maps.max_services(), maps.backends.len())
        };
        Ok(Dataplane {
            opts,
            maps,
            programmed,
            ebpf,
            task_links: HashSet::new(),
            adopted,
        })
    }

    /// Puts the overlay program on the overlay interface (again after it was
    /// re-created, as a userspace device is when its agent restarts).
    pub fn attach_overlay(&mut self, iface: &str, l2: bool) -> Result<(), DataplaneError> {
        let program = if l2 {
            PROG_OVERLAY_INGRESS_L2
        } else {
            PROG_OVERLAY_INGRESS
        };
        attach(&mut self.ebpf, program, iface, TcAttachType::Ingress)
    }

    /// A loaded program, by its name in `mesh_common` (`PROG_*`).
    pub fn program(&self, name: &str) -> Option<&SchedClassifier> {
        self.ebpf.program(name).and_then(|p| p.try_into().ok())
    }

    /// Brings the maps to `want`, writing only what differs.
    pub fn apply(&mut self, want: &Desired) -> Result<ApplyReport, DataplaneError> {
        let report = sync::apply(&mut self.maps, &mut self.programmed, want);
        // Names are saved even after a partial failure: they describe the maps.
        if !matches!(&report, Ok(r) if r.is_noop()) {
            write_names(&self.opts.data_dir, &self.programmed)?;
            write_json(
                &self.opts.data_dir.join(NET_INDEX_FILE),
                &self.programmed.net_index,
            )?;
        }
        report
    }

    /// Adds or changes one service (and its backends) without looking at
    /// any other: the cost does not grow with the number of services.
    pub fn upsert_service(
        &mut self,
        want: &Desired,
        name: &str,
    ) -> Result<ApplyReport, DataplaneError> {
        let mut report = ApplyReport::default();
        if let Some(s) = want.services.get(name) {
            sync::upsert_one(&mut self.maps, &mut self.programmed, s, &mut report)?;
        }
        Ok(report)
    }

    /// Attaches the task program to task veths that appeared since the
    /// last scan; forgets the ones that are gone.
    pub fn scan_task_links(&mut self) -> Result<Vec<String>, DataplaneError> {
        let mut present = HashSet::new();
        let mut added = Vec::new();
        for link in crate::netdev::links()? {
            // Any link with the prefix (operators of static configs make
            // their own task veths); the prefix itself is checked never to
            // be the start of a host interface's name.
            if !link.0.starts_with(&self.opts.task_prefix) {
                continue;
            }
            if !self.task_links.contains(&link) {
                attach(
                    &mut self.ebpf,
                    PROG_TASK_INGRESS,
                    &link.0,
                    TcAttachType::Ingress,
                )?;
                attach(
                    &mut self.ebpf,
                    PROG_TASK_EGRESS,
                    &link.0,
                    TcAttachType::Egress,
                )?;
                added.push(link.0.clone());
            }
            present.insert(link);
        }
        self.task_links = present;
        Ok(added)
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DataplaneError> {
    let missing = || DataplaneError::Program {
        name,
        source: ProgramError::UnexpectedProgramType,
    };
    ebpf.program_mut(name)
        .ok_or_else(missing)?
        .try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}

/// Puts `name` on `iface`'s TC ingress or egress: replaces our filter in
/// place if one is there (agent restart), creates it otherwise. The link is
/// left behind on purpose: traffic keeps flowing when the agent exits.
fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    at: TcAttachType,
) -> Result<(), DataplaneError> {
    let err = |source| DataplaneError::Attach {
        program: name,
        iface: iface.to_string(),
        source,
    };
    // Fails harmlessly when the clsact qdisc already exists.
    let _ = tc::qdisc_add_clsact(iface);
    let prog = program(ebpf, name)?;
    let existing = SchedClassifierLink::attached(iface, at, TC_PRIORITY, TC_HANDLE, None)
        .map_err(|e| err(ProgramError::IOError(e)))?;
    let id = match prog.attach_to_link(existing) {
        Ok(id) => id,
        Err(_) => prog
            .attach_with_options(
                iface,
                at,
                TcAttachOptions::Netlink(NlOptions {
                    priority: TC_PRIORITY,
                    handle: TC_HANDLE,
                    classid: None,
                }),
            )
            .map_err(err)?,
    };
    let link = prog.take_link(id).map_err(err)?;
    std::mem::forget(link);
    Ok(())
}

/// Mounts bpffs on /sys/fs/bpf if it is not there yet.
fn ensure_bpffs() -> Result<(), DataplaneError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let st = nix::sys::statfs::statfs("/sys/fs/bpf").map_err(std::io::Error::from)?;
    if st.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        "/sys/fs/bpf",
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| std::io::Error::other(format!("mounting bpffs on /sys/fs/bpf: {e}")))?;
    Ok(())
}

pub fn read_names(data_dir: &Path) -> HashMap<u32, String> {
    read_json(&data_dir.join(NAMES_FILE))
}

/// A record beside the maps; missing or damaged reads as empty (the maps
/// are then rewritten, not misread).
fn read_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> T {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), DataplaneError> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(value).expect("records serialise"),
    )?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn write_names(data_dir: &Path, p: &Programmed) -> Result<(), DataplaneError> {
    write_json(&data_dir.join(NAMES_FILE), &p.names())
}
