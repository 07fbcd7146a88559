//! TCP segmentation and coalescing for a TUN device that speaks virtio-net
//! headers (`IFF_VNET_HDR`). With TSO offered, the kernel hands the
//! userspace WireGuard one 64 KiB TCP segment per read instead of ~45
//! packets, each having crossed the whole stack; it is split here, after
//! the stack, into MTU-sized packets to encrypt. On the way in, decrypted
//! segments of one flow are joined back into one write, so the receiving
//! stack sees one large packet (what GRO does for a NIC).

/// Size of `struct virtio_net_hdr` (without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_ECN: u8 = 0x80;

const PROTO_TCP: u8 = 6;
#[cfg(test)]
const PROTO_UDP: u8 = 17;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;

/// The largest IPv4 packet a coalesced write may form.
const MAX_COALESCED: usize = 65535;

/// `struct virtio_net_hdr`, in the host's byte order (a TUN's default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<Self> {
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        (b.len() >= VNET_HDR_LEN).then(|| VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn write(&self, out: &mut [u8]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        for (i, v) in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        ]
        .into_iter()
        .enumerate()
        {
            out[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_ne_bytes());
        }
    }
}

/// Adds `data` to a ones'-complement sum (as 16-bit big-endian words;
/// 32-bit words fold to the same result and take half the steps).
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Sum of the IPv4 pseudo-header of a `len`-byte transport segment.
fn pseudo4(ip: &[u8], len: usize) -> u64 {
    sum(&ip[12..20], u64::from(ip[9]) + len as u64)
}

fn set_ip_checksum(ip: &mut [u8], ihl: usize) {
    ip[10..12].fill(0);
    let c = !fold(sum(&ip[..ihl], 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("packet shorter than its headers say")]
    Truncated,
    #[error("checksum offset outside the packet")]
    BadChecksumOffset,
    #[error("GSO type {0:#x} was not offered")]
    UnsupportedGso(u8),
}

/// Turns what one TUN read returned (`pkt`, after its virtio-net header)
/// into complete packets: checksums the kernel left to the device are
/// filled in, and a TCP segment larger than its MSS is cut into MSS-sized
/// packets. `emit` gets each packet as header bytes and payload bytes.
pub fn split(
    hdr: &VnetHdr,
    pkt: &mut [u8],
    mut emit: impl FnMut(&[u8], &[u8]),
) -> Result<(), SplitError> {
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(hdr, pkt)?;
            }
            emit(pkt, &[]);
            Ok(())
        }
        GSO_TCPV4 => split_tcp4(usize::from(hdr.gso_size), pkt, emit),
        other => Err(SplitError::UnsupportedGso(other)),
    }
}

/// The device was asked to finish a partial checksum: the field holds the
/// pseudo-header sum; the sum of everything from `csum_start` completes it.
fn complete_checksum(hdr: &VnetHdr, pkt: &mut [u8]) -> Result<(), SplitError> {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > pkt.len() {
        return Err(SplitError::BadChecksumOffset);
    }
    let mut c = !fold(sum(&pkt[start..], 0));
    // A UDP checksum of 0 means "none" (and IPv6 drops such a datagram);
    // its ones'-complement twin checks out the same for every protocol.
    if c == 0 {
        c = 0xffff;
    }
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

fn split_tcp4(
    mss: usize,
    pkt: &mut [u8],
    mut emit: impl FnMut(&[u8], &[u8]),
) -> Result<(), SplitError> {
    let ihl = usize::from(pkt.first().ok_or(SplitError::Truncated)? & 0x0f) * 4;
    if ihl < 20 || pkt.len() < ihl + 20 {
        return Err(SplitError::Truncated);
    }
    let hl = ihl + usize::from(pkt[ihl + 12] >> 4) * 4;
    if hl < ihl + 20 || hl > pkt.len() || hl > 120 || mss == 0 {
        return Err(SplitError::Truncated);
    }
    let (headers, payload) = pkt.split_at(hl);
    let id0 = be16(headers, 4);
    let seq0 = be32(headers, ihl + 4);
    let flags0 = headers[ihl + 13];
    let chunks = payload.len().div_ceil(mss).max(1);
    let mut h = [0u8; 120];
    for i in 0..chunks {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let h = &mut h[..hl];
        h.copy_from_slice(headers);
        h[2..4].copy_from_slice(&((hl + chunk.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        set_ip_checksum(h, ihl);
        let seq = seq0.wrapping_add((i * mss) as u32);
        h[ihl + 4..ihl + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 < chunks {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        h[ihl + 13] = flags;
        h[ihl + 16..ihl + 18].fill(0);
        let tcp_len = hl - ihl + chunk.len();
        let c = !fold(sum(chunk, sum(&h[ihl..], pseudo4(h, tcp_len))));
        h[ihl + 16..ihl + 18].copy_from_slice(&c.to_be_bytes());
        emit(h, chunk);
    }
    Ok(())
}

/// What a coalescable packet (IPv4, TCP, ACK with data, nothing else set
/// but PSH, not a fragment) looks like.
struct TcpData {
    ihl: usize,
    hl: usize,
    seq: u32,
    psh: bool,
    payload: usize,
}

fn tcp_data(p: &[u8]) -> Option<TcpData> {
    let v = *p.first()?;
    let ihl = usize::from(v & 0x0f) * 4;
    if v >> 4 != 4 || ihl < 20 || p.len() < ihl + 20 || usize::from(be16(p, 2)) != p.len() {
        return None;
    }
    // Not a fragment, and DF set: without DF, GRO requires IP ids that step
    // by one, which a joined packet re-cut later would not keep.
    if p[9] != PROTO_TCP || be16(p, 6) & 0x7fff != 0x4000 {
        return None;
    }
    let hl = ihl + usize::from(p[ihl + 12] >> 4) * 4;
    let flags = p[ihl + 13];
    if hl < ihl + 20 || hl >= p.len() || flags & !TCP_PSH != TCP_ACK {
        return None;
    }
    Some(TcpData {
        ihl,
        hl,
        seq: be32(p, ihl + 4),
        psh: flags & TCP_PSH != 0,
        payload: p.len() - hl,
    })
}

/// Joins consecutive segments of one TCP flow into one packet with a
/// virtio-net header asking the kernel to treat it as GSO: `push` what
/// arrives in order, `flush` when a packet does not fit or the batch ends.
/// Payloads stay in their packets; a flush writes them as one gather list.
pub struct Coalescer<P> {
    /// virtio-net header, then the first packet's IP and TCP headers.
    head: Vec<u8>,
    /// Written between the virtio-net header and each packet (an L2
    /// device's Ethernet header; empty on a TUN).
    link: Vec<u8>,
    segments: Vec<P>,
    ihl: usize,
    hl: usize,
    mss: usize,
    len: usize,
    next_seq: u32,
    open: bool,
    /// The kernel refused a joined packet: join no more.
    refused: bool,
}

impl<P> Default for Coalescer<P> {
    fn default() -> Self {
        Coalescer {
            head: Vec::new(),
            link: Vec::new(),
            segments: Vec::new(),
            ihl: 0,
            hl: 0,
            mss: 0,
            len: 0,
            next_seq: 0,
            open: false,
            refused: false,
        }
    }
}

impl<P: AsRef<[u8]>> Coalescer<P> {
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// What goes in front of the packets from now on (flush first: pending
    /// segments would go with it too).
    pub fn set_link(&mut self, link: &[u8]) {
        self.link.clear();
        self.link.extend_from_slice(link);
    }

    /// Takes `p` in when it starts or continues the pending flow; gives it
    /// back when the caller must `flush` first (or it cannot be joined).
    pub fn push(&mut self, p: P) -> Result<(), P> {
        let b = p.as_ref();
        let Some(t) = tcp_data(b).filter(|_| !self.refused) else {
            return Err(p);
        };
        if self.segments.is_empty() {
            self.head.clear();
            self.head.resize(VNET_HDR_LEN, 0);
            self.head.extend_from_slice(&b[..t.hl]);
            self.ihl = t.ihl;
            self.hl = t.hl;
            self.mss = t.payload;
            self.len = b.len();
            self.next_seq = t.seq.wrapping_add(t.payload as u32);
            self.open = !t.psh;
            self.segments.push(p);
            return Ok(());
        }
        let first = &self.head[VNET_HDR_LEN..];
        let (ihl, hl) = (self.ihl, self.hl);
        let same_flow = t.ihl == ihl
            && t.hl == hl
            // version/IHL and TOS; DF, TTL and protocol; addresses and IP options
            && b[..2] == first[..2]
            && b[6..10] == first[6..10]
            && b[12..ihl] == first[12..ihl]
            // ports, then acknowledgment, header length, window, urgent pointer, options
            && b[ihl..ihl + 4] == first[ihl..ihl + 4]
            && b[ihl + 8..ihl + 13] == first[ihl + 8..ihl + 13]
            && b[ihl + 14..ihl + 16] == first[ihl + 14..ihl + 16]
            && b[ihl + 18..hl] == first[ihl + 18..hl];
        let fits = self.len + t.payload <= MAX_COALESCED;
        if !self.open || !same_flow || !fits || t.seq != self.next_seq || t.payload > self.mss {
            return Err(p);
        }
        self.len += t.payload;
        self.next_seq = self.next_seq.wrapping_add(t.payload as u32);
        if t.psh {
            self.head[VNET_HDR_LEN + ihl + 13] |= TCP_PSH;
        }
        self.open = !t.psh && t.payload == self.mss;
        self.segments.push(p);
        Ok(())
    }

    /// Hands the pending packet to `write` as the byte slices to write in
    /// order (virtio-net header first), and empties the coalescer. A lone
    /// packet goes as it came. Should the kernel refuse a joined packet
    /// (`EINVAL`), its segments go one by one and joining stops.
    pub fn flush(
        &mut self,
        mut write: impl FnMut(&[&[u8]]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        const PLAIN: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
        let hl = self.hl;
        let link = self.link.as_slice();
        let result = if self.segments.len() < 2 {
            let whole = self.segments.first().map(|p| p.as_ref()).unwrap_or(&[]);
            write(&[&PLAIN, link, whole])
        } else {
            let ihl = self.ihl;
            let ip = &mut self.head[VNET_HDR_LEN..];
            ip[2..4].copy_from_slice(&(self.len as u16).to_be_bytes());
            set_ip_checksum(ip, ihl);
            // CHECKSUM_PARTIAL: the field holds the pseudo-header sum only.
            let partial = fold(pseudo4(ip, self.len - ihl));
            ip[ihl + 16..ihl + 18].copy_from_slice(&partial.to_be_bytes());
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: (link.len() + hl) as u16,
                gso_size: self.mss as u16,
                csum_start: (link.len() + ihl) as u16,
                csum_offset: 16,
            }
            .write(&mut self.head[..VNET_HDR_LEN]);
            let mut parts: Vec<&[u8]> = Vec::with_capacity(3 + self.segments.len());
            parts.push(&self.head[..VNET_HDR_LEN]);
            parts.push(link);
            parts.push(&self.head[VNET_HDR_LEN..]);
            parts.extend(self.segments.iter().map(|p| &p.as_ref()[hl..]));
            match write(&parts) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!("the TUN device refused a joined TCP packet ({e}); writing packets one by one from now on");
                    self.refused = true;
                    self.segments
                        .iter()
                        .try_for_each(|p| write(&[&PLAIN, link, p.as_ref()]))
                }
                other => other,
            }
        };
        self.segments.clear();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP packet with a correct checksum and the given payload.
    fn tcp4(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 32];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((52 + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&7u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[10, 201, 1, 10]);
        p[16..20].copy_from_slice(&[10, 201, 2, 10]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&99u32.to_be_bytes());
        p[32] = 8 << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&502u16.to_be_bytes());
        // timestamps option, padded
        p[40..52].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        p.extend_from_slice(payload);
        set_ip_checksum(&mut p, 20);
        let c = !fold(sum(&p[20..], pseudo4(&p, p.len() - 20)));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn valid(p: &[u8]) -> bool {
        fold(sum(&p[..20], 0)) == 0xffff && fold(sum(&p[20..], pseudo4(p, p.len() - 20))) == 0xffff
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn a_tso_segment_splits_into_valid_packets_that_coalesce_back() {
        let data = payload(4000);
        let whole = tcp4(1000, TCP_ACK | TCP_PSH, &data);
        // As the kernel hands it over: checksum left partial.
        let mut pkt = whole.clone();
        let partial = fold(pseudo4(&pkt, pkt.len() - 20));
        pkt[36..38].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1388,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut out = Vec::new();
        split(&hdr, &mut pkt, |h, p| out.push([h, p].concat())).unwrap();
        assert_eq!(out.len(), 3);
        for (i, seg) in out.iter().enumerate() {
            assert!(valid(seg), "segment {i} checksums");
            assert_eq!(be32(seg, 24), 1000 + (i * 1388) as u32);
            assert_eq!(seg[33] & TCP_PSH != 0, i == 2, "PSH only on the last");
            assert_eq!(be16(seg, 4), 7 + i as u16);
        }
        assert_eq!(out[2].len(), 52 + 4000 - 2 * 1388);

        let mut c = Coalescer::default();
        for seg in &out {
            assert!(c.push(seg).is_ok());
        }
        let mut joined = Vec::new();
        c.flush(|parts| {
            joined = parts.concat();
            Ok(())
        })
        .unwrap();
        let h = VnetHdr::parse(&joined).unwrap();
        assert_eq!((h.gso_type, h.gso_size, h.hdr_len), (GSO_TCPV4, 1388, 52));
        let mut ip = joined[VNET_HDR_LEN..].to_vec();
        assert_eq!(&ip[52..], &data[..]);
        assert_eq!(fold(sum(&ip[..20], 0)), 0xffff);
        // Finishing the partial checksum gives the original packet back.
        complete_checksum(&h, &mut ip).unwrap();
        assert_eq!(ip, whole);
    }

    #[test]
    fn coalescing_stops_at_a_gap_another_flow_or_a_short_segment() {
        let a = tcp4(0, TCP_ACK, &payload(100));
        let gap = tcp4(150, TCP_ACK, &payload(100));
        let mut c = Coalescer::default();
        assert!(c.push(&a).is_ok());
        assert!(c.push(&gap).is_err(), "sequence gap");
        let mut other = tcp4(100, TCP_ACK, &payload(100));
        other[23] ^= 1; // another destination port
        assert!(c.push(&other).is_err(), "another flow");
        let short = tcp4(100, TCP_ACK, &payload(60));
        assert!(c.push(&short).is_ok());
        let after = tcp4(160, TCP_ACK, &payload(100));
        assert!(c.push(&after).is_err(), "closed after a short one");
        let syn = tcp4(0, 0x02, &[]);
        assert!(
            Coalescer::default().push(&syn).is_err(),
            "control packets go alone"
        );
        // A lone packet is written unchanged behind an empty header.
        let mut single = Coalescer::default();
        assert!(single.push(&a).is_ok());
        let mut out = Vec::new();
        single
            .flush(|parts| {
                out = parts.concat();
                Ok(())
            })
            .unwrap();
        assert_eq!(&out[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
        assert_eq!(&out[VNET_HDR_LEN..], &a[..]);
        assert!(single.is_empty());
    }

    #[test]
    fn a_refused_joined_packet_goes_out_in_pieces_and_joining_stops() {
        let segs: Vec<Vec<u8>> = (0..3)
            .map(|i| tcp4(i * 100, TCP_ACK, &payload(100)))
            .collect();
        let mut c = Coalescer::default();
        for s in &segs {
            assert!(c.push(s).is_ok());
        }
        let mut written = Vec::new();
        c.flush(|parts| {
            let w = parts.concat();
            if VnetHdr::parse(&w).unwrap().gso_type != GSO_NONE {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
            written.push(w[VNET_HDR_LEN..].to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(written, segs);
        assert!(c.push(&segs[0]).is_err(), "no more joining");
    }

    #[test]
    fn packets_without_df_are_not_joined_and_bad_headers_are_refused() {
        let mut no_df = tcp4(0, TCP_ACK, &payload(100));
        no_df[6] = 0;
        assert!(Coalescer::default().push(&no_df).is_err());
        let mut short_tcp = tcp4(0, TCP_ACK, &payload(3000));
        short_tcp[32] = 4 << 4; // a TCP header "16 bytes" long
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            gso_size: 1000,
            csum_start: 20,
            csum_offset: 16,
            ..Default::default()
        };
        assert_eq!(
            split(&hdr, &mut short_tcp, |_, _| panic!("nothing to emit")),
            Err(SplitError::Truncated)
        );
    }

    #[test]
    fn a_partial_udp_checksum_is_completed() {
        let mut p = vec![0u8; 28 + 5];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&33u16.to_be_bytes());
        p[9] = PROTO_UDP;
        p[12..20].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        p[24..26].copy_from_slice(&13u16.to_be_bytes());
        p[28..].copy_from_slice(b"hello");
        let partial = fold(pseudo4(&p, 13));
        p[26..28].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 6,
            ..Default::default()
        };
        let mut seen = Vec::new();
        split(&hdr, &mut p, |h, rest| seen.push([h, rest].concat())).unwrap();
        let q = &seen[0];
        assert_eq!(fold(sum(&q[20..], pseudo4(q, 13))), 0xffff);
        let bad = VnetHdr {
            csum_start: 40,
            ..hdr
        };
        assert_eq!(
            split(&bad, &mut p, |_, _| {}),
            Err(SplitError::BadChecksumOffset)
        );
    }
}
