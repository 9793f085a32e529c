//! Every rank's plan run together in memory: the results each collective must give, for every rank count from 1 to
//! 6 and counts that do not divide evenly, with the messages matched by their tokens.

use std::collections::VecDeque;

use super::*;

struct Rank {
    src: Vec<u8>,
    dst: Vec<u8>,
    scratch: Vec<u8>,
    steps: Vec<Step>,
    at: usize,
    /// The current step's send is done (its receive may still wait).
    sent: bool,
    sent_count: u64,
    received_count: u64,
}

impl Rank {
    fn buf(&mut self, b: Buf) -> &mut Vec<u8> {
        match b {
            Buf::Src => &mut self.src,
            Buf::Dst => &mut self.dst,
            Buf::Scratch => &mut self.scratch,
        }
    }

    fn read(&mut self, p: Part) -> Vec<u8> {
        let (o, l) = (p.offset as usize, p.len as usize);
        self.buf(p.buf)[o..o + l].to_vec()
    }
}

const SECRET: [u8; 16] = [7; 16];

/// Runs every rank's plan; each message carries its token, which the receiver checks. Panics on a deadlock.
fn run(c: Collective, inputs: &[Vec<u8>], dst_len: usize) -> Vec<Rank> {
    let n = c.nranks as usize;
    let mut ranks: Vec<Rank> = (0..n)
        .map(|r| {
            let p = plan(&Collective { rank: r as u32, ..c }).expect("plan");
            assert!(
                p.src_len as usize <= inputs[r].len(),
                "rank {r} reads {} bytes",
                p.src_len
            );
            assert!(p.dst_len as usize <= dst_len);
            Rank {
                src: inputs[r].clone(),
                dst: vec![0xEE; dst_len],
                scratch: vec![0xDD; p.scratch_len as usize],
                steps: p.steps,
                at: 0,
                sent: false,
                sent_count: 0,
                received_count: 0,
            }
        })
        .collect();
    // Messages in flight to each rank, with their tokens.
    let mut wires: Vec<VecDeque<([u8; 16], Vec<u8>)>> = vec![VecDeque::new(); n];
    let series = Series::Collective { seq: 9 };
    loop {
        let mut progressed = false;
        for r in 0..n {
            let rank = &mut ranks[r];
            let Some(step) = rank.steps.get(rank.at).copied() else {
                continue;
            };
            if !rank.sent {
                if let Some((to, from)) = step.copy {
                    assert_eq!(to.len, from.len);
                    let bytes = rank.read(from);
                    rank.buf(to.buf)[to.offset as usize..(to.offset + to.len) as usize].copy_from_slice(&bytes);
                }
                if let Some(part) = step.send {
                    let next = (r + 1) % n;
                    let t = token(&SECRET, series, r as u32, next as u32, rank.sent_count);
                    rank.sent_count += 1;
                    let bytes = rank.read(part);
                    wires[next].push_back((t, bytes));
                }
                rank.sent = true;
                progressed = true;
            }
            let rank = &mut ranks[r];
            if let Some((part, combine)) = step.recv {
                let Some((t, bytes)) = wires[r].pop_front() else {
                    continue;
                };
                let prev = (r + n - 1) % n;
                assert_eq!(t, token(&SECRET, series, prev as u32, r as u32, rank.received_count));
                rank.received_count += 1;
                assert_eq!(
                    bytes.len() as u64,
                    part.len,
                    "rank {r} step {} got the wrong length",
                    rank.at
                );
                let place = &mut rank.buf(part.buf)[part.offset as usize..(part.offset + part.len) as usize];
                match combine {
                    Combine::Replace => place.copy_from_slice(&bytes),
                    Combine::Reduce { divide } => reduce_into(c.dtype, c.op, place, &bytes, divide).expect("reduce"),
                }
            }
            rank.at += 1;
            rank.sent = false;
            progressed = true;
        }
        if ranks.iter().all(|r| r.at == r.steps.len()) {
            break;
        }
        assert!(
            progressed,
            "deadlock: {:?}",
            ranks.iter().map(|r| r.at).collect::<Vec<_>>()
        );
    }
    assert!(wires.iter().all(VecDeque::is_empty), "messages left unread");
    ranks
}

fn i32s(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn as_i32s(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().expect("4")))
        .collect()
}

/// Input of rank r: distinct values per rank and position.
fn input(r: usize, len: usize) -> Vec<i32> {
    (0..len).map(|i| (r as i32 + 1) * 1000 + i as i32 * 7 - 3).collect()
}

fn coll(kind: u32, op: u32, nranks: usize, root: usize, count: usize) -> Collective {
    Collective {
        kind,
        dtype: DTYPE_I32,
        op,
        nranks: nranks as u32,
        rank: 0,
        root: root as u32,
        count: count as u64,
    }
}

fn reduce_all(op: u32, vals: &[i32], n: usize) -> i32 {
    let r = match op {
        OP_SUM | OP_AVG => vals.iter().fold(0i32, |a, b| a.wrapping_add(*b)),
        OP_PROD => vals.iter().fold(1i32, |a, b| a.wrapping_mul(*b)),
        OP_MAX => *vals.iter().max().expect("some"),
        _ => *vals.iter().min().expect("some"),
    };
    if op == OP_AVG {
        r / n as i32
    } else {
        r
    }
}

#[test]
fn all_reduce_gives_every_rank_the_reduction() {
    for n in 1..=6 {
        for count in [0usize, 1, 5, 13, 64] {
            for op in [OP_SUM, OP_PROD, OP_MAX, OP_MIN, OP_AVG] {
                let inputs: Vec<Vec<u8>> = (0..n).map(|r| i32s(&input(r, count))).collect();
                let ranks = run(coll(KIND_ALL_REDUCE, op, n, 0, count), &inputs, count * 4);
                let want: Vec<i32> = (0..count)
                    .map(|i| reduce_all(op, &(0..n).map(|r| input(r, count)[i]).collect::<Vec<_>>(), n))
                    .collect();
                for (r, rank) in ranks.iter().enumerate() {
                    assert_eq!(as_i32s(&rank.dst), want, "n {n} count {count} op {op} rank {r}");
                }
            }
        }
    }
}

#[test]
fn broadcast_and_reduce_reach_every_rank_and_the_root() {
    // Larger than two pipeline pieces, not a multiple of them.
    let big = (2 * PIPELINE_PIECE as usize + 4096) / 4;
    for n in 1..=5 {
        for root in 0..n {
            // The piece boundaries once per shape of chain (big buffers are slow in a debug build).
            let counts: &[usize] = if n == 3 { &[0, 3, big] } else { &[0, 3, 4097] };
            for &count in counts {
                let values: Vec<Vec<i32>> = (0..n).map(|r| input(r, count)).collect();
                let inputs: Vec<Vec<u8>> = values.iter().map(|v| i32s(v)).collect();
                let ranks = run(coll(KIND_BROADCAST, OP_SUM, n, root, count), &inputs, count * 4);
                for rank in &ranks {
                    assert!(as_i32s(&rank.dst) == values[root], "broadcast n {n} root {root}");
                }
                for op in [OP_SUM, OP_MAX, OP_AVG] {
                    let ranks = run(coll(KIND_REDUCE, op, n, root, count), &inputs, count * 4);
                    let want: Vec<i32> = (0..count)
                        .map(|i| reduce_all(op, &values.iter().map(|v| v[i]).collect::<Vec<_>>(), n))
                        .collect();
                    assert!(as_i32s(&ranks[root].dst) == want, "reduce n {n} root {root} op {op}");
                    for (r, rank) in ranks.iter().enumerate() {
                        if r != root {
                            assert!(
                                rank.dst.iter().all(|b| *b == 0xEE),
                                "reduce wrote rank {r}'s destination"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn all_gather_and_reduce_scatter_place_each_block() {
    for n in 1..=6 {
        for count in [0usize, 1, 7] {
            let inputs: Vec<Vec<u8>> = (0..n).map(|r| i32s(&input(r, count))).collect();
            let ranks = run(coll(KIND_ALL_GATHER, OP_SUM, n, 0, count), &inputs, n * count * 4);
            let want: Vec<i32> = (0..n).flat_map(|r| input(r, count)).collect();
            for rank in &ranks {
                assert_eq!(as_i32s(&rank.dst), want, "all-gather n {n} count {count}");
            }
            let inputs: Vec<Vec<u8>> = (0..n).map(|r| i32s(&input(r, n * count))).collect();
            for op in [OP_SUM, OP_MIN, OP_AVG] {
                let ranks = run(coll(KIND_REDUCE_SCATTER, op, n, 0, count), &inputs, count * 4);
                for (r, rank) in ranks.iter().enumerate() {
                    let want: Vec<i32> = (0..count)
                        .map(|i| {
                            let at = r * count + i;
                            reduce_all(op, &(0..n).map(|q| input(q, n * count)[at]).collect::<Vec<_>>(), n)
                        })
                        .collect();
                    assert_eq!(
                        as_i32s(&rank.dst),
                        want,
                        "reduce-scatter n {n} count {count} op {op} rank {r}"
                    );
                }
            }
        }
    }
}

#[test]
fn bad_collectives_are_refused_by_name() {
    let ok = coll(KIND_ALL_REDUCE, OP_SUM, 2, 0, 4);
    assert!(plan(&ok).is_ok());
    assert_eq!(plan(&Collective { nranks: 0, ..ok }), Err(PlanError::Ranks));
    assert_eq!(plan(&Collective { rank: 2, ..ok }), Err(PlanError::Ranks));
    assert_eq!(plan(&Collective { dtype: 10, ..ok }), Err(PlanError::Type));
    assert_eq!(plan(&Collective { op: 5, ..ok }), Err(PlanError::Op));
    assert_eq!(plan(&Collective { kind: 9, ..ok }), Err(PlanError::Kind));
    assert_eq!(
        plan(&Collective {
            kind: KIND_SEND_RECV,
            ..ok
        }),
        Err(PlanError::Kind)
    );
    assert_eq!(
        plan(&Collective {
            kind: KIND_BROADCAST,
            root: 2,
            ..ok
        }),
        Err(PlanError::Root)
    );
    assert_eq!(
        plan(&Collective {
            count: u64::MAX / 2,
            ..ok
        }),
        Err(PlanError::Size)
    );
    // An operation means nothing to a broadcast or a gather: any is accepted there.
    assert!(plan(&Collective {
        kind: KIND_ALL_GATHER,
        op: 77,
        ..ok
    })
    .is_ok());
}

#[test]
fn tokens_differ_by_every_input_and_need_the_secret() {
    let s = Series::Collective { seq: 1 };
    let base = token(&SECRET, s, 0, 1, 0);
    assert_eq!(base, token(&SECRET, s, 0, 1, 0));
    assert_ne!(base, token(&[8; 16], s, 0, 1, 0));
    assert_ne!(base, token(&SECRET, Series::Collective { seq: 2 }, 0, 1, 0));
    assert_ne!(base, token(&SECRET, Series::PointToPoint, 0, 1, 0));
    assert_ne!(base, token(&SECRET, s, 1, 0, 0));
    assert_ne!(base, token(&SECRET, s, 0, 1, 1));
}

#[test]
fn split_secrets_differ_by_split_and_color() {
    let a = derive_secret(&SECRET, 0, 1);
    assert_eq!(a, derive_secret(&SECRET, 0, 1));
    assert_ne!(a, derive_secret(&SECRET, 1, 1));
    assert_ne!(a, derive_secret(&SECRET, 0, 2));
    assert_ne!(a, derive_secret(&[9; 16], 0, 1));
    assert_ne!(a, SECRET);
}

#[test]
fn reductions_of_every_type() {
    let mut acc = vec![250u8, 3];
    reduce_into(DTYPE_U8, OP_SUM, &mut acc, &[10, 4], 0).expect("u8");
    assert_eq!(acc, [4, 7], "wraps as the GPU's 8-bit add");
    let mut acc = (-5i8).to_le_bytes().to_vec();
    reduce_into(DTYPE_I8, OP_MAX, &mut acc, &(-7i8).to_le_bytes(), 0).expect("i8");
    assert_eq!(acc, (-5i8).to_le_bytes());
    let mut acc = [u64::MAX - 1, 8]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect::<Vec<_>>();
    let inc = [1u64, 8].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>();
    reduce_into(DTYPE_U64, OP_AVG, &mut acc, &inc, 2).expect("u64");
    assert_eq!(acc[..8], (u64::MAX / 2).to_le_bytes());
    assert_eq!(acc[8..], 8u64.to_le_bytes());
    let mut acc = 1.5f64.to_le_bytes().to_vec();
    reduce_into(DTYPE_F64, OP_PROD, &mut acc, &(-2.0f64).to_le_bytes(), 0).expect("f64");
    assert_eq!(acc, (-3.0f64).to_le_bytes());
    let mut acc = half::f16::from_f32(1.25).to_le_bytes().to_vec();
    reduce_into(DTYPE_F16, OP_AVG, &mut acc, &half::f16::from_f32(2.75).to_le_bytes(), 2).expect("f16");
    assert_eq!(acc, half::f16::from_f32(2.0).to_le_bytes());
    let mut acc = half::bf16::from_f32(3.0).to_le_bytes().to_vec();
    reduce_into(
        DTYPE_BF16,
        OP_MIN,
        &mut acc,
        &half::bf16::from_f32(-1.0).to_le_bytes(),
        0,
    )
    .expect("bf16");
    assert_eq!(acc, half::bf16::from_f32(-1.0).to_le_bytes());
    let mut acc = 1.0f32.to_le_bytes().to_vec();
    reduce_into(DTYPE_F32, OP_MAX, &mut acc, &f32::NAN.to_le_bytes(), 0).expect("f32");
    assert_eq!(acc, 1.0f32.to_le_bytes(), "a NaN loses to a number");
    assert_eq!(
        reduce_into(DTYPE_F32, OP_SUM, &mut [0; 4], &[0; 8], 0),
        Err(PlanError::Size)
    );
    assert_eq!(
        reduce_into(DTYPE_F32, OP_SUM, &mut [0; 3], &[0; 3], 0),
        Err(PlanError::Size)
    );
    assert_eq!(reduce_into(42, OP_SUM, &mut [0; 4], &[0; 4], 0), Err(PlanError::Type));
    assert_eq!(reduce_into(DTYPE_F32, 9, &mut [0; 4], &[0; 4], 0), Err(PlanError::Op));
}

#[test]
fn parallel_reductions_match_the_serial_one() {
    let len = (3 << 20) + 12; // not a multiple of the parts
    let acc: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let inc: Vec<u8> = (0..len).map(|i| (i * 13 % 241) as u8).collect();
    for (dtype, op, divide) in [
        (DTYPE_F32, OP_SUM, 0),
        (DTYPE_I32, OP_MAX, 0),
        (DTYPE_F16, OP_AVG, 3),
        (DTYPE_U8, OP_PROD, 0),
    ] {
        let mut serial = acc.clone();
        reduce_into(dtype, op, &mut serial, &inc, divide).expect("serial");
        for threads in [1, 2, 3, 4] {
            let mut parallel = acc.clone();
            reduce_into_parallel(dtype, op, &mut parallel, &inc, divide, threads).expect("parallel");
            assert!(parallel == serial, "dtype {dtype} op {op} on {threads} threads");
        }
    }
    assert_eq!(
        reduce_into_parallel(DTYPE_F32, OP_SUM, &mut vec![0; 2 << 20], &vec![0; 2 << 20], 0, 4).map(|_| ()),
        Ok(())
    );
}
