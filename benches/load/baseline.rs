//! The physical floor of RTP on this machine: N UDP sockets, each sending one 172-byte packet
//! (12-byte RTP header + 160 bytes of G.711) every 20 ms to itself over loopback and reading it
//! back, on one pacing thread per core, as the gateway's media engine does for N calls (one
//! packet out, one packet in, per call per 20 ms). `benches/load/run.sh` measures this
//! process's CPU and the inter-packet interval of one socket and compares the gateway to it.
//!
//! `cargo run --release --example rtp-baseline -- SOCKETS SECONDS`

use std::net::UdpSocket;
use std::time::{Duration, Instant};

const PACKET: usize = 172;
const FRAME: Duration = Duration::from_millis(20);

fn main() {
    let mut args = std::env::args().skip(1);
    let sockets: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(sockets.max(1));
    let mut all = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        match UdpSocket::bind("127.0.0.1:0").and_then(|s| s.set_nonblocking(true).map(|()| s)) {
            Ok(s) => all.push(s),
            Err(e) => {
                eprintln!("rtp-baseline: cannot bind socket {}: {e}", all.len() + 1);
                std::process::exit(1);
            }
        }
    }
    let first = all
        .first()
        .and_then(|s| s.local_addr().ok())
        .map_or(0, |a| a.port());
    println!("rtp-baseline ready sockets={sockets} threads={threads} first_port={first}");
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut groups: Vec<Vec<UdpSocket>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in all.into_iter().enumerate() {
        groups[i % threads].push(s);
    }
    let handles: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(t, group)| {
            std::thread::spawn(move || {
                let addrs: Vec<_> = group.iter().filter_map(|s| s.local_addr().ok()).collect();
                let mut pkt = [0u8; PACKET];
                pkt[0] = 0x80;
                let mut buf = [0u8; 2048];
                let (mut sent, mut received) = (0u64, 0u64);
                // Threads are offset on the 20 ms grid, as the gateway's workers are.
                let mut next = Instant::now() + FRAME / (t as u32 + 1);
                let mut seq: u16 = 0;
                while Instant::now() < end {
                    seq = seq.wrapping_add(1);
                    pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                    for (s, a) in group.iter().zip(&addrs) {
                        if s.send_to(&pkt, a).is_ok() {
                            sent += 1;
                        }
                        while s.recv_from(&mut buf).is_ok() {
                            received += 1;
                        }
                    }
                    next += FRAME;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
                (sent, received)
            })
        })
        .collect();
    let (mut sent, mut received) = (0, 0);
    for h in handles {
        if let Ok((s, r)) = h.join() {
            sent += s;
            received += r;
        }
    }
    println!("rtp-baseline done sent={sent} received={received}");
}
