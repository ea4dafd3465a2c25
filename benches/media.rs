//! Hot paths of a call: G.711/G.722 encode and decode, RTP packetising and parsing, in-band
//! DTMF detection (Goertzel), the jitter buffer, SRTP protect/unprotect next to a plain packet,
//! and Liquid rendering. Throughput is per 20 ms
//! frame (160 samples at 8 kHz, 320 at 16 kHz), the unit the media engine works in.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use switchboard::flow::template::{Scope, Templates};
use switchboard::media::codec::{Codec, Decoder};
use switchboard::media::g722::{G722Decoder, G722Encoder};
use switchboard::media::goertzel::InbandDtmf;
use switchboard::media::jitter::JitterBuffer;
use switchboard::media::rtp::{self, RtpSender};
use switchboard::media::srtp::{MasterKey, Srtp, SrtpKeys, Suite};

fn speechy(n: usize, rate: f64) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let t = i as f64 / rate;
            ((t * 2.0 * std::f64::consts::PI * 310.0).sin() * 6000.0 * (1.0 + (t * 25.0).sin())
                / 2.0) as i16
        })
        .collect()
}

fn codecs(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    let pcm8 = speechy(160, 8000.0);
    for codec in [Codec::Pcmu, Codec::Pcma] {
        let mut enc = Vec::with_capacity(160);
        g.bench_function(format!("{codec:?}_encode_20ms"), |b| {
            b.iter(|| {
                enc.clear();
                codec.encode(black_box(&pcm8), &mut enc);
            })
        });
        let mut dec = Vec::with_capacity(160);
        let mut d = Decoder::new(codec);
        g.bench_function(format!("{codec:?}_decode_20ms"), |b| {
            b.iter(|| {
                dec.clear();
                d.decode(black_box(&enc), &mut dec);
            })
        });
    }
    let pcm16 = speechy(320, 16000.0);
    let mut e = G722Encoder::new();
    let mut out = Vec::with_capacity(160);
    g.bench_function("G722_encode_20ms", |b| {
        b.iter(|| {
            out.clear();
            e.encode(black_box(&pcm16), &mut out);
        })
    });
    let mut d = G722Decoder::new();
    let mut pcm = Vec::with_capacity(320);
    g.bench_function("G722_decode_20ms", |b| {
        b.iter(|| {
            pcm.clear();
            d.decode(black_box(&out), &mut pcm);
        })
    });
    g.finish();
}

fn rtp_and_dtmf(c: &mut Criterion) {
    let mut g = c.benchmark_group("rtp");
    g.throughput(Throughput::Elements(1));
    let mut s = RtpSender::new(0);
    let payload = [0xFFu8; 160];
    let mut buf = [0u8; 172];
    g.bench_function("packetise_20ms", |b| {
        b.iter(|| {
            let n = s.write(&mut buf, black_box(&payload), 0, false);
            s.advance(160);
            black_box(n)
        })
    });
    g.bench_function("parse", |b| {
        b.iter(|| black_box(rtp::parse(black_box(&buf)).map(|p| p.payload.len())))
    });
    let mut det = InbandDtmf::new(8000).expect("8 kHz is supported");
    let pcm = speechy(160, 8000.0);
    g.bench_function("goertzel_20ms", |b| {
        b.iter(|| {
            det.push(black_box(&pcm), &mut |d| {
                black_box(d);
            })
        })
    });
    let mut jb = JitterBuffer::new(3);
    let mut seq = 0u16;
    let mut frame = [0u8; 480];
    g.bench_function("jitter_push_pop", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            jb.push(seq, seq as u32 * 160, &payload);
            black_box(jb.pop(&mut frame))
        })
    });
    g.finish();
}

fn liquid(c: &mut Criterion) {
    let mut g = c.benchmark_group("liquid");
    let src = "Hello {{widgets.lookup.parsed.name | default: 'there'}}, you have {{widgets.lookup.parsed.orders.size}} orders{% if flow.variables.vip == 'yes' %}, VIP{% endif %}.";
    let mut t = Templates::default();
    t.add(src).expect("template compiles");
    let ctx = json!({"flow": {"variables": {"vip": "yes"}}, "widgets": {"lookup": {"parsed": {"name": "Ada", "orders": [1, 2, 3]}}}});
    let scope = Scope::new(&ctx);
    g.throughput(Throughput::Elements(1));
    g.bench_function("render_prompt", |b| {
        b.iter(|| black_box(t.render(black_box(src), &scope)))
    });
    g.finish();
}

/// What SRTP adds to each 20 ms packet: the plain packetise+parse pair is the baseline, the
/// protected pair adds AES-CM and HMAC-SHA1 each way (one packet out, one in, as a call does).
fn srtp(c: &mut Criterion) {
    let mut g = c.benchmark_group("srtp");
    g.throughput(Throughput::Elements(1));
    let payload = [0xD5u8; 160];
    let mut buf = [0u8; 172];
    let mut s = RtpSender::new(0);
    g.bench_function("plain_send_and_receive_20ms", |b| {
        b.iter(|| {
            let n = s.write(&mut buf, black_box(&payload), 0, false);
            s.advance(160);
            black_box(rtp::parse(black_box(&buf[..n])).map(|p| p.payload.len()))
        })
    });
    for suite in Suite::ALL {
        let (a, k) = (MasterKey::random(), MasterKey::random());
        let mut us = Srtp::new(&SrtpKeys {
            suite,
            local: a.clone(),
            remote: k.clone(),
        })
        .expect("keys");
        let mut them = Srtp::new(&SrtpKeys {
            suite,
            local: k,
            remote: a,
        })
        .expect("keys");
        let mut s = RtpSender::new(0);
        g.bench_function(format!("{}_send_and_receive_20ms", suite.name()), |b| {
            b.iter(|| {
                let n = s.write(&mut buf, black_box(&payload), 0, false);
                s.advance(160);
                let wire = us.protect_rtp(&buf[..n]).expect("protect");
                let plain = them.unprotect_rtp(&wire).expect("unprotect");
                black_box(rtp::parse(&plain).map(|p| p.payload.len()))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codecs, rtp_and_dtmf, srtp, liquid);
criterion_main!(benches);
