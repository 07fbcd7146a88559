//! Typed handles on the pinned maps of one node's data plane.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use mesh_common::*;

use super::DataplaneError;

pub struct Maps {
    pub services: HashMap<MapData, Lb4Key, Lb4Service>,
    pub backends: Array<MapData, Backend>,
    pub maglev: MaglevTables,
    pub ct: HashMap<MapData, Ct4Key, CtEntry>,
    pub config: Array<MapData, NodeConfig>,
    pub stats: PerCpuArray<MapData, u64>,
    pub svc_stats: PerCpuArray<MapData, Counters>,
    pub backend_stats: PerCpuArray<MapData, Counters>,
}

fn open(dir: &Path, name: &str) -> Result<Map, DataplaneError> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| DataplaneError::OpenMap {
        path: path.clone(),
        source,
    })?;
    Map::from_map_data(data).map_err(|source| DataplaneError::OpenMap { path, source })
}

fn typed<T: TryFrom<Map, Error = MapError>>(dir: &Path, name: &str) -> Result<T, DataplaneError> {
    T::try_from(open(dir, name)?).map_err(|source| DataplaneError::OpenMap {
        path: dir.join(name),
        source,
    })
}

impl Maps {
    /// Opens the maps pinned under `dir` (by a running or a past agent).
    pub fn open_pinned(dir: &Path) -> Result<Self, DataplaneError> {
        Ok(Maps {
            services: typed(dir, MAP_LB4_SERVICES)?,
            backends: typed(dir, MAP_LB_BACKENDS)?,
            maglev: MaglevTables::open(dir)?,
            ct: typed(dir, MAP_CT4)?,
            config: typed(dir, MAP_CONFIG)?,
            stats: typed(dir, MAP_STATS)?,
            svc_stats: typed(dir, MAP_SVC_STATS)?,
            backend_stats: typed(dir, MAP_BACKEND_STATS)?,
        })
    }

    /// Number of service slots (Maglev table pairs) the maps were made with.
    pub fn max_services(&self) -> u32 {
        self.maglev.rows() / (MAGLEV_M * MAGLEV_HALVES)
    }
}

/// The Maglev array, mapped into our memory: a whole table is written with
/// plain stores instead of one syscall per row.
pub struct MaglevTables {
    ptr: *mut u64,
    rows: u32,
    len_bytes: usize,
    // Keeps the map alive as long as the mapping.
    _map: MapData,
}

// SAFETY: the mapping is owned by this value and only reached through
// `&mut self` for writes; the kernel side synchronises with BPF readers.
unsafe impl Send for MaglevTables {}

impl MaglevTables {
    fn open(dir: &Path) -> Result<Self, DataplaneError> {
        let path: PathBuf = dir.join(MAP_LB_MAGLEV);
        let map = MapData::from_pin(&path).map_err(|source| DataplaneError::OpenMap {
            path: path.clone(),
            source,
        })?;
        let info = map.info().map_err(|source| DataplaneError::OpenMap {
            path: path.clone(),
            source,
        })?;
        let rows = info.max_entries();
        let page = 4096usize;
        let len_bytes = (rows as usize * 8).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF array created with BPF_F_MMAPABLE; the
        // length covers its value area rounded up to a page, as the kernel
        // requires. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DataplaneError::Mmap {
                path,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(MaglevTables {
            ptr: ptr.cast(),
            rows,
            len_bytes,
            _map: map,
        })
    }

    pub fn rows(&self) -> u32 {
        self.rows
    }

    fn range(&self, svc_id: u32, half: u32) -> std::ops::Range<usize> {
        let start = ((svc_id * MAGLEV_HALVES + half) * MAGLEV_M) as usize;
        let r = start..start + MAGLEV_M as usize;
        assert!(
            r.end <= self.rows as usize,
            "Maglev table {svc_id}/{half} beyond the map"
        );
        r
    }

    /// The kernel stores array elements 8-byte aligned: row `i` of the map
    /// sits at byte `8 * i` of the mapping, its value in the low 4 bytes.
    fn slots(&self) -> *mut u64 {
        self.ptr
    }

    pub fn read(&self, svc_id: u32, half: u32) -> Vec<u32> {
        // SAFETY: `range` keeps indices inside the mapping; slots are aligned u64s.
        self.range(svc_id, half)
            .map(|i| unsafe { self.slots().add(i).read_volatile() } as u32)
            .collect()
    }

    pub fn write(&mut self, svc_id: u32, half: u32, rows: &[u32]) {
        let r = self.range(svc_id, half);
        assert_eq!(rows.len(), r.len());
        for (i, v) in r.zip(rows) {
            // SAFETY: as in `read`; `&mut self` makes us the only writer.
            unsafe { self.slots().add(i).write_volatile(u64::from(*v)) };
        }
    }
}

impl Drop for MaglevTables {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len_bytes) };
    }
}
