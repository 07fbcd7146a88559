//! Typed handles on the pinned maps of one node's data plane.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use mesh_common::*;

use super::DataplaneError;

pub struct Maps {
    pub services: HashMap<MapData, Lb4Key, Lb4Service>,
    pub backends: MmapArray<Backend>,
    pub svc_backends: ServiceBackends,
    pub maglev: MaglevTables,
    pub ct: HashMap<MapData, Ct4Key, CtEntry>,
    pub config: Array<MapData, NodeConfig>,
    pub nodes: HashMap<MapData, u32, u32>,
    pub task_nets: LpmTrie<MapData, u32, u32>,
    pub netsets: HashMap<MapData, u32, NetSet>,
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
            backends: MmapArray::open(dir, MAP_LB_BACKENDS)?,
            svc_backends: ServiceBackends(MmapArray::open(dir, MAP_LB_SVC_BACKENDS)?),
            maglev: MaglevTables(MmapArray::open(dir, MAP_LB_MAGLEV)?),
            ct: typed(dir, MAP_CT4)?,
            config: typed(dir, MAP_CONFIG)?,
            nodes: typed(dir, MAP_NODES4)?,
            task_nets: typed(dir, MAP_TASK_NETS4)?,
            netsets: typed(dir, MAP_TASK_NETSETS4)?,
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

/// A BPF array created with `BPF_F_MMAPABLE`, mapped into our memory: whole
/// tables are written with plain stores instead of one syscall per entry.
pub struct MmapArray<T> {
    ptr: *mut u8,
    len: u32,
    elem: usize,
    map_len: usize,
    // Keeps the map alive as long as the mapping.
    _map: MapData,
    _t: std::marker::PhantomData<T>,
}

// SAFETY: the mapping is owned by this value and written only through
// `&mut self`; the kernel side synchronises with BPF readers.
unsafe impl<T: Send> Send for MmapArray<T> {}

impl<T: Copy> MmapArray<T> {
    fn open(dir: &Path, name: &str) -> Result<Self, DataplaneError> {
        let path: PathBuf = dir.join(name);
        let err = |source| DataplaneError::OpenMap {
            path: path.clone(),
            source,
        };
        let map = MapData::from_pin(&path).map_err(err)?;
        let info = map.info().map_err(err)?;
        // The kernel lays array elements out 8-byte aligned.
        let elem = (info.value_size() as usize).div_ceil(8) * 8;
        assert_eq!(
            info.value_size() as usize,
            std::mem::size_of::<T>(),
            "{name}: value size"
        );
        let len = info.max_entries();
        let map_len = (len as usize * elem).div_ceil(4096) * 4096;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF array created with BPF_F_MMAPABLE, for the
        // length of its values rounded up to a page, as the kernel
        // requires. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
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
        Ok(MmapArray {
            ptr: ptr.cast(),
            len,
            elem,
            map_len,
            _map: map,
            _t: std::marker::PhantomData,
        })
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, i: u32) -> *mut T {
        assert!(i < self.len, "index {i} beyond the map ({})", self.len);
        // SAFETY: in bounds (checked above); elements are 8-byte aligned.
        unsafe { self.ptr.add(i as usize * self.elem).cast() }
    }

    pub fn get(&self, i: u32) -> T {
        // SAFETY: `at` returns an in-bounds, aligned element.
        unsafe { self.at(i).read_volatile() }
    }

    pub fn set(&mut self, i: u32, v: T) {
        // SAFETY: as in `get`; `&mut self` makes us the only writer here.
        unsafe { self.at(i).write_volatile(v) }
    }
}

impl<T> Drop for MmapArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.map_len) };
    }
}

/// The Maglev tables: two per service slot.
pub struct MaglevTables(MmapArray<u32>);

impl MaglevTables {
    pub fn rows(&self) -> u32 {
        self.0.len()
    }

    fn start(svc_id: u32, half: u32) -> u32 {
        (svc_id * MAGLEV_HALVES + half) * MAGLEV_M
    }

    pub fn read(&self, svc_id: u32, half: u32) -> Vec<u32> {
        let s = Self::start(svc_id, half);
        (s..s + MAGLEV_M).map(|i| self.0.get(i)).collect()
    }

    pub fn write(&mut self, svc_id: u32, half: u32, rows: &[u32]) {
        assert_eq!(rows.len(), MAGLEV_M as usize);
        let s = Self::start(svc_id, half);
        for (i, v) in (s..).zip(rows) {
            self.0.set(i, *v);
        }
    }
}

/// Each service's backend list (ids), for operators and re-adoption.
pub struct ServiceBackends(MmapArray<u32>);

impl ServiceBackends {
    pub fn read(&self, svc_id: u32, count: u16) -> Vec<u32> {
        let s = svc_id * MAX_BACKENDS_PER_SERVICE;
        (s..s + u32::from(count).min(MAX_BACKENDS_PER_SERVICE))
            .map(|i| self.0.get(i))
            .collect()
    }

    pub fn write(&mut self, svc_id: u32, ids: &[u32]) {
        assert!(ids.len() <= MAX_BACKENDS_PER_SERVICE as usize);
        let s = svc_id * MAX_BACKENDS_PER_SERVICE;
        for (i, id) in (s..).zip(ids) {
            self.0.set(i, *id);
        }
    }
}
