//! The pinned maps and small accessors.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use mesh_common::*;

#[map(name = "apiary_lb4_services")]
pub static LB4_SERVICES: HashMap<Lb4Key, Lb4Service> =
    HashMap::pinned(DEFAULT_MAX_SERVICES * LB4_ENTRIES_PER_SERVICE, 0);

#[map(name = "apiary_lb_backends")]
pub static LB_BACKENDS: Array<Backend> = Array::pinned(DEFAULT_MAX_BACKENDS, BPF_F_MMAPABLE);

/// Read by operators and the agent only; declared here so it is created
/// and pinned with the others.
#[map(name = "apiary_lb_svc_backends")]
pub static LB_SVC_BACKENDS: Array<u32> = Array::pinned(
    DEFAULT_MAX_SERVICES * MAX_BACKENDS_PER_SERVICE,
    BPF_F_MMAPABLE,
);

#[map(name = "apiary_lb_maglev")]
pub static LB_MAGLEV: Array<u32> = Array::pinned(
    DEFAULT_MAX_SERVICES * MAGLEV_HALVES * MAGLEV_M,
    BPF_F_MMAPABLE,
);

#[map(name = "apiary_ct4")]
pub static CT4: LruHashMap<Ct4Key, CtEntry> = LruHashMap::pinned(DEFAULT_CT_ENTRIES, 0);

#[map(name = "apiary_config")]
pub static CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

#[map(name = "apiary_stats_v4")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_MAX, 0);

#[map(name = "apiary_nodes4")]
pub static NODES4: HashMap<u32, u32> = HashMap::pinned(MAX_NODES, 0);

#[map(name = "apiary_task_nets4")]
pub static TASK_NETS4: LpmTrie<u32, u32> = LpmTrie::pinned(MAX_TASK_NETS, 0);

/// The tunnel address of the node whose tasks hold `addr` (network order),
/// if it is a task address of the cluster.
#[inline(always)]
pub fn task_owner(addr: u32) -> Option<u32> {
    TASK_NETS4.get(Key::new(32, addr)).copied()
}

#[map(name = "apiary_task_netsets4")]
pub static TASK_NETSETS4: HashMap<u32, NetSet> = HashMap::pinned(DEFAULT_MAX_BACKENDS, 0);

/// Whether a packet a task sent from `src` to task address `dst` (both
/// network order) crosses between networks they do not share. An address
/// with no entry is on no network; a source without one is let through
/// only where the node does not isolate (static configs).
#[inline(always)]
pub fn isolated(src: u32, dst: u32, cfg: &NodeConfig) -> bool {
    // SAFETY: plain reads of hash values; a concurrent update replaces the
    // element, and a stale copy only decides one packet.
    let Some(from) = (unsafe { TASK_NETSETS4.get(&src) }) else {
        return cfg.flags & CFG_F_ISOLATE != 0;
    };
    // SAFETY: as above.
    match unsafe { TASK_NETSETS4.get(&dst) } {
        Some(to) => !from.meets(to),
        None => true,
    }
}

#[map(name = "apiary_task_src4")]
pub static TASK_SRC4: LruHashMap<u32, u32> = LruHashMap::pinned(MAX_TASK_LINKS, 0);

#[map(name = "apiary_lb_svc_stats")]
pub static SVC_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(DEFAULT_MAX_SERVICES, 0);

#[map(name = "apiary_lb_backend_stats")]
pub static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(DEFAULT_MAX_BACKENDS, 0);

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(p) = STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot; this program is the only writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// Whether encapsulated packets from `addr` are opened when they arrive
/// by the way `flag` names.
#[inline(always)]
pub fn node_sends(addr: u32, flag: u32) -> bool {
    // SAFETY: a plain read of a hash value.
    NODES4
        .get_ptr(&addr)
        .is_some_and(|f| unsafe { *f } & flag != 0)
}

#[inline(always)]
pub fn config() -> Option<NodeConfig> {
    let cfg = CONFIG.get(0)?;
    if cfg.ready == 0 {
        count(STAT_NO_CONFIG);
        return None;
    }
    Some(*cfg)
}

#[inline(always)]
fn add(counters: Option<*mut Counters>, bytes: u32, new_flow: bool) {
    if let Some(c) = counters {
        // SAFETY: per-CPU slot; this program is the only writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
            if new_flow {
                (*c).flows += 1;
            }
        }
    }
}

#[inline(always)]
pub fn count_flow(svc_id: u32, backend_id: u32, bytes: u32, new_flow: bool) {
    add(SVC_STATS.get_ptr_mut(svc_id), bytes, new_flow);
    add(BACKEND_STATS.get_ptr_mut(backend_id), bytes, new_flow);
}
