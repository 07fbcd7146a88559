//! Header offsets and the parsed view of an IPv4 TCP/UDP packet.

use aya_ebpf::programs::TcContext;
use mesh_common::*;

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
/// Offsets inside the IPv4 header (relative to the Ethernet header end).
pub const IP_CSUM_OFF: usize = ETH_LEN + 10;
pub const IP_SADDR_OFF: usize = ETH_LEN + 12;
pub const IP_DADDR_OFF: usize = ETH_LEN + 16;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// An IPv4 TCP or UDP packet: addresses and ports in network order.
#[derive(Clone, Copy)]
pub struct Packet {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: usize,
    /// IPv4 total length (host order).
    pub ip_len: u16,
}

impl Packet {
    /// `Ok(None)` for what the mesh does not touch (not IPv4, not TCP/UDP,
    /// later fragments): pass it on.
    #[inline(always)]
    pub fn parse(ctx: &TcContext) -> Result<Option<Packet>, u32> {
        let eth_proto: u16 = ctx.load(12).map_err(|_| STAT_DROP_MALFORMED)?;
        if u16::from_be(eth_proto) != ETH_P_IP {
            return Ok(None);
        }
        let ip: Ipv4Hdr = ctx.load(ETH_LEN).map_err(|_| STAT_DROP_MALFORMED)?;
        if ip.vihl >> 4 != 4 {
            return Err(STAT_DROP_MALFORMED);
        }
        if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
            return Ok(None);
        }
        // Only the first fragment has ports; the rest go to the stack.
        if u16::from_be(ip.frag_off) & 0x1fff != 0 {
            crate::maps::count(STAT_FRAGMENT);
            return Ok(None);
        }
        let ihl = ((ip.vihl & 0x0f) as usize) * 4;
        if ihl < 20 {
            return Err(STAT_DROP_MALFORMED);
        }
        let l4_off = ETH_LEN + ihl;
        let ports: [u16; 2] = ctx.load(l4_off).map_err(|_| STAT_DROP_MALFORMED)?;
        let tcp_flags = if ip.proto == PROTO_TCP {
            ctx.load::<u8>(l4_off + 13)
                .map_err(|_| STAT_DROP_MALFORMED)?
        } else {
            0
        };
        Ok(Some(Packet {
            saddr: ip.saddr,
            daddr: ip.daddr,
            sport: ports[0],
            dport: ports[1],
            proto: ip.proto,
            tcp_flags,
            l4_off,
            ip_len: u16::from_be(ip.tot_len),
        }))
    }

    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        if self.proto == PROTO_TCP {
            self.l4_off + 16
        } else {
            self.l4_off + 6
        }
    }

    /// A TCP SYN without ACK: the first packet of a connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.proto == PROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    #[inline(always)]
    pub fn is_closing(&self) -> bool {
        self.proto == PROTO_TCP && self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }
}
