//! Linearizability under faults: several clients put, get (linearizable) and compare-and-swap a
//! few keys on a three-member cluster while, at random, members are SIGKILLed and restarted,
//! cut off from the others, two of them cut from each other only, or one killed while another is
//! cut off (no quorum); snapshots are frequent, so members coming back are often sent one (the
//! network is `netcluster`'s: one namespace per member, `iptables DROP` inside it). Every
//! operation is recorded with its invocation and return times on one monotonic clock; one that
//! fails or times out may or may not have taken effect and stays open-ended. The history is then
//! checked, key by key, against a register model with a Wing & Gong search with memoisation (as
//! Porcupine and Knossos do); after the run every member must read the same last values and
//! reach the same revision and hash.
//!
//! `LINEARIZABILITY_SECONDS` (default 60) sets how long the clients run; `LINEARIZABILITY_SEED`
//! (default fixed, printed) drives the fault schedule and the operations, so a run can be
//! repeated (thread timing aside).

mod netcluster;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use miniorch_store::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use miniorch_store::pb::etcdserverpb::kv_client::KvClient;
use miniorch_store::pb::etcdserverpb::request_op::Request;
use miniorch_store::pb::etcdserverpb::response_op::Response;
use miniorch_store::pb::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use netcluster::{NetCluster, eventually, rt, splitmix};
use tonic::transport::Channel;

const KEYS: usize = 3;
const CLIENTS: usize = 5;
const DEFAULT_SEED: u64 = 0x5EED_FA17;

// ---------------------------------------------------------------------------------------------
// History and model

/// What a client asked for. Every value written is unique in the whole history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    Put(u64),
    Get,
    /// Compare the value with `expect`; if equal put `new`, else read the value.
    Cas {
        expect: u64,
        new: u64,
    },
}

/// What it got back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Put,
    Get(Option<u64>),
    Cas {
        ok: bool,
        seen: Option<u64>,
    },
    /// Failed or timed out: it may or may not have taken effect.
    Unknown,
}

#[derive(Clone, Copy, Debug)]
struct Op {
    client: usize,
    /// The member the client asked.
    member: usize,
    key: usize,
    input: Input,
    output: Output,
    /// Nanoseconds since the start of the test, on one monotonic clock.
    call: u64,
    /// `None` for an operation whose outcome is unknown: open-ended.
    ret: Option<u64>,
}

type State = Option<u64>;

/// The register: the state after `input` answered `output` in `state`, or `None` when that
/// answer is impossible in that state.
fn step(state: State, input: Input, output: Output) -> Option<State> {
    match (input, output) {
        (Input::Put(v), Output::Put | Output::Unknown) => Some(Some(v)),
        (Input::Get, Output::Get(v)) => (v == state).then_some(state),
        (Input::Get, Output::Unknown) => Some(state),
        (Input::Cas { expect, new }, Output::Cas { ok: true, .. }) => {
            (state == Some(expect)).then_some(Some(new))
        }
        (Input::Cas { expect, .. }, Output::Cas { ok: false, seen }) => {
            (state != Some(expect) && seen == state).then_some(state)
        }
        (Input::Cas { expect, new }, Output::Unknown) => Some(if state == Some(expect) {
            Some(new)
        } else {
            state
        }),
        _ => None,
    }
}

/// The value an operation writes if it takes effect.
fn written(input: Input) -> Option<u64> {
    match input {
        Input::Put(v) | Input::Cas { new: v, .. } => Some(v),
        Input::Get => None,
    }
}

/// Drops what carries no information: reads that failed, and open-ended writes whose value
/// nobody saw (no read returned it, no compare-and-swap compared with it).
///
/// This keeps the verdict. One way: a dropped operation is open-ended, so it can always be
/// placed after everything else (or never happen). The other way: take a linearization of the
/// whole history and remove a dropped write `w`. Until the next write that takes effect, no
/// operation can have looked at the register while it held `w`'s value (a read would have
/// returned it, a compare would have named it), except an open-ended compare-and-swap that
/// found a different value and did nothing; move that one to the end. Every other operation
/// sees the same value as before.
fn reduce(ops: &[Op]) -> Vec<Op> {
    let mut seen = HashSet::new();
    for op in ops {
        match (op.input, op.output) {
            (_, Output::Get(Some(v))) | (_, Output::Cas { seen: Some(v), .. }) => {
                seen.insert(v);
            }
            _ => {}
        }
        if let Input::Cas { expect, .. } = op.input {
            seen.insert(expect);
        }
    }
    ops.iter()
        .filter(|op| match op.output {
            Output::Unknown => written(op.input).is_some_and(|v| seen.contains(&v)),
            _ => true,
        })
        .cloned()
        .collect()
}

/// Why a history is not linearizable, or why the search gave up.
#[derive(Debug)]
struct Violation {
    /// True when the search ran out of its step budget (no verdict).
    gave_up: bool,
    /// The operation no linearization could place, at the deepest point the search reached.
    stuck: Option<Op>,
    /// The register's value there.
    state: State,
    /// How many operations had been placed there.
    placed: usize,
}

const STEP_BUDGET: u64 = 50_000_000;

/// Wing & Gong's search with Lowe's memoisation, over one key's history: take the operations
/// in order of invocation; place any whose invocation precedes every pending return and that
/// the model accepts; backtrack when a return comes up whose operation is not placed yet.
fn check_register(ops: &[Op], initial: State) -> Result<(), Box<Violation>> {
    const NIL: usize = usize::MAX;
    let n = ops.len();
    // Nodes 0..n are invocations, n..2n returns, 2n the head of the list.
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, 0, i));
        events.push((op.ret.unwrap_or(u64::MAX), 1, n + i));
    }
    // At equal times the invocation first: overlapping is the more permissive reading.
    events.sort();
    let head = 2 * n;
    let mut next = vec![NIL; 2 * n + 1];
    let mut prev = vec![NIL; 2 * n + 1];
    let mut last = head;
    for &(_, _, node) in &events {
        next[last] = node;
        prev[node] = last;
        last = node;
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, q) = (prev[node], next[node]);
        next[p] = q;
        if q != NIL {
            prev[q] = p;
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, q) = (prev[node], next[node]);
        next[p] = node;
        if q != NIL {
            prev[q] = node;
        }
    };
    let closed_total = ops.iter().filter(|op| op.ret.is_some()).count();
    let mut closed_done = 0;
    let words = n.div_ceil(64);
    let mut placed_bits = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state = initial;
    let mut entry = next[head];
    let mut steps = 0u64;
    let mut deepest = Violation {
        gave_up: false,
        stuck: None,
        state,
        placed: 0,
    };
    loop {
        // Open-ended operations left over can all go last (or never happen).
        if closed_done == closed_total {
            return Ok(());
        }
        steps += 1;
        if steps > STEP_BUDGET {
            deepest.gave_up = true;
            return Err(Box::new(deepest));
        }
        assert_ne!(entry, NIL, "a return always precedes the end of the list");
        if entry < n {
            let i = entry;
            if let Some(after) = step(state, ops[i].input, ops[i].output) {
                let mut bits = placed_bits.clone();
                bits[i / 64] |= 1 << (i % 64);
                if cache.insert((bits.clone(), after)) {
                    stack.push((i, state));
                    state = after;
                    placed_bits = bits;
                    if ops[i].ret.is_some() {
                        closed_done += 1;
                    }
                    lift(&mut next, &mut prev, i);
                    lift(&mut next, &mut prev, n + i);
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // The operation returning here was never placed: undo the last placement.
            if stack.len() >= deepest.placed {
                deepest = Violation {
                    gave_up: false,
                    stuck: Some(ops[entry - n]),
                    state,
                    placed: stack.len(),
                };
            }
            let Some((i, before)) = stack.pop() else {
                return Err(Box::new(deepest));
            };
            state = before;
            placed_bits[i / 64] &= !(1 << (i % 64));
            if ops[i].ret.is_some() {
                closed_done -= 1;
            }
            unlift(&mut next, &mut prev, n + i);
            unlift(&mut next, &mut prev, i);
            entry = next[i];
        }
    }
}

/// Checks one key's history, from an absent key.
fn check_key(ops: &[Op]) -> Result<(), Box<Violation>> {
    check_register(&reduce(ops), None)
}

fn show(op: &Op) -> String {
    let ret = op
        .ret
        .map_or("open".to_string(), |r| format!("{:.6}s", r as f64 / 1e9));
    format!(
        "client {} via m{} key {} [{:.6}s .. {ret}] {:?} -> {:?}",
        op.client,
        op.member,
        op.key,
        op.call as f64 / 1e9,
        op.input,
        op.output
    )
}

/// An excerpt of `ops` around `op`, sorted by invocation.
fn excerpt(ops: &[Op], around: &Op) -> String {
    let from = around.call.saturating_sub(2_000_000_000);
    let to = around
        .ret
        .unwrap_or(around.call)
        .saturating_add(500_000_000);
    let mut near: Vec<&Op> = ops
        .iter()
        .filter(|o| o.call <= to && o.ret.is_none_or(|r| r >= from))
        .collect();
    near.sort_by_key(|o| o.call);
    let skipped = near.len().saturating_sub(60);
    let mut out: Vec<String> = near.iter().skip(skipped).map(|o| show(o)).collect();
    if skipped > 0 {
        out.insert(0, format!("... {skipped} earlier operations"));
    }
    out.join("\n")
}

// ---------------------------------------------------------------------------------------------
// Checker self test

fn op(client: usize, input: Input, output: Output, call: u64, ret: Option<u64>) -> Op {
    Op {
        client,
        member: 0,
        key: 0,
        input,
        output,
        call,
        ret,
    }
}

#[test]
fn checker_accepts_linearizable_and_rejects_other_histories() {
    use Input::{Cas, Get, Put};
    // Concurrent writes may take effect in either order.
    let ok = [
        op(0, Put(1), Output::Put, 0, Some(10)),
        op(1, Put(2), Output::Put, 5, Some(15)),
        op(2, Get, Output::Get(Some(1)), 12, Some(20)),
    ];
    assert!(check_key(&ok).is_ok());
    // A read that misses a write completed before it began is stale.
    let stale = [
        op(0, Put(1), Output::Put, 0, Some(10)),
        op(1, Put(2), Output::Put, 20, Some(30)),
        op(2, Get, Output::Get(Some(1)), 40, Some(50)),
    ];
    let v = check_key(&stale).expect_err("stale read accepted");
    assert!(!v.gave_up);
    // An open-ended write may take effect late, but a value once overwritten never returns.
    let mut late = vec![
        op(0, Put(1), Output::Put, 0, Some(5)),
        op(1, Put(3), Output::Unknown, 1, None),
        op(2, Get, Output::Get(Some(1)), 10, Some(20)),
        op(2, Get, Output::Get(Some(3)), 30, Some(40)),
    ];
    assert!(check_key(&late).is_ok());
    late.push(op(2, Get, Output::Get(Some(1)), 50, Some(60)));
    assert!(check_key(&late).is_err(), "a value came back");
    // An open-ended write nobody saw may never have happened.
    let never = [
        op(0, Put(1), Output::Put, 0, Some(5)),
        op(1, Put(3), Output::Unknown, 6, None),
        op(2, Get, Output::Get(Some(1)), 100, Some(110)),
    ];
    assert!(check_key(&never).is_ok());
    // Two successful compare-and-swaps from the same value.
    let double = [
        op(0, Put(1), Output::Put, 0, Some(5)),
        op(
            1,
            Cas { expect: 1, new: 2 },
            Output::Cas {
                ok: true,
                seen: None,
            },
            10,
            Some(15),
        ),
        op(
            2,
            Cas { expect: 1, new: 3 },
            Output::Cas {
                ok: true,
                seen: None,
            },
            20,
            Some(25),
        ),
    ];
    assert!(check_key(&double).is_err(), "double CAS accepted");
    let failed = [
        op(0, Put(1), Output::Put, 0, Some(5)),
        op(
            1,
            Cas { expect: 1, new: 2 },
            Output::Cas {
                ok: true,
                seen: None,
            },
            10,
            Some(15),
        ),
        op(
            2,
            Cas { expect: 1, new: 3 },
            Output::Cas {
                ok: false,
                seen: Some(2),
            },
            20,
            Some(25),
        ),
        op(2, Get, Output::Get(Some(2)), 30, Some(35)),
    ];
    assert!(check_key(&failed).is_ok());
    // A failed CAS must report the value there was.
    let wrong_seen = [
        op(0, Put(1), Output::Put, 0, Some(5)),
        op(1, Put(2), Output::Put, 10, Some(15)),
        op(
            2,
            Cas { expect: 1, new: 3 },
            Output::Cas {
                ok: false,
                seen: Some(1),
            },
            20,
            Some(25),
        ),
    ];
    assert!(
        check_key(&wrong_seen).is_err(),
        "CAS saw an overwritten value"
    );
    // An open CAS that must have succeeded (its value is read), concurrent with a put.
    let open_cas = [
        op(0, Put(1), Output::Put, 0, Some(5)),
        op(1, Cas { expect: 1, new: 2 }, Output::Unknown, 6, None),
        op(2, Put(4), Output::Put, 7, Some(9)),
        op(2, Get, Output::Get(Some(2)), 20, Some(25)),
    ];
    // Put(4) completes at 9 and the CAS needs 1 in place: it cannot follow Put(4).
    assert!(
        check_key(&open_cas).is_err(),
        "CAS applied over a different value"
    );
    let open_cas_ok = [
        op(0, Put(1), Output::Put, 0, Some(5)),
        op(1, Cas { expect: 1, new: 2 }, Output::Unknown, 6, None),
        op(2, Get, Output::Get(Some(1)), 7, Some(9)),
        op(2, Get, Output::Get(Some(2)), 20, Some(25)),
    ];
    assert!(check_key(&open_cas_ok).is_ok());
    // Many concurrent open writes stay tractable.
    let mut wide = vec![op(0, Put(0), Output::Put, 0, Some(1))];
    for v in 1..200 {
        wide.push(op(v as usize, Put(v), Output::Unknown, 2 + v, None));
    }
    wide.push(op(0, Get, Output::Get(Some(150)), 1000, Some(1001)));
    wide.push(op(0, Get, Output::Get(Some(7)), 1002, Some(1003)));
    assert!(check_key(&wide).is_ok());
    wide.push(op(0, Get, Output::Get(Some(150)), 1004, Some(1005)));
    assert!(check_key(&wide).is_err());
}

// ---------------------------------------------------------------------------------------------
// The run

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    Some(if let Some(hex) = v.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("{name}={v}: not a number"))
    } else {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
    })
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = splitmix(self.0);
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}

fn key_name(k: usize) -> Vec<u8> {
    format!("lin/k{k}").into_bytes()
}

fn parse(v: &[u8]) -> u64 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a value nobody wrote: {:?}", String::from_utf8_lossy(v)))
}

async fn do_op(ch: Channel, key: usize, input: Input) -> Result<Output, tonic::Status> {
    let mut kv = KvClient::new(ch);
    let key = key_name(key);
    Ok(match input {
        Input::Put(v) => {
            kv.put(PutRequest {
                key,
                value: v.to_string().into_bytes(),
                ..Default::default()
            })
            .await?;
            Output::Put
        }
        Input::Get => {
            let r = kv
                .range(RangeRequest {
                    key,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Output::Get(r.kvs.first().map(|kv| parse(&kv.value)))
        }
        Input::Cas { expect, new } => {
            let r = kv
                .txn(TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Value as i32,
                        key: key.clone(),
                        target_union: Some(TargetUnion::Value(expect.to_string().into_bytes())),
                        range_end: Vec::new(),
                    }],
                    success: vec![RequestOp {
                        request: Some(Request::RequestPut(PutRequest {
                            key: key.clone(),
                            value: new.to_string().into_bytes(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![RequestOp {
                        request: Some(Request::RequestRange(RangeRequest {
                            key,
                            ..Default::default()
                        })),
                    }],
                })
                .await?
                .into_inner();
            if r.succeeded {
                Output::Cas {
                    ok: true,
                    seen: None,
                }
            } else {
                let seen = match r.responses.first().and_then(|r| r.response.as_ref()) {
                    Some(Response::ResponseRange(rr)) => rr.kvs.first().map(|kv| parse(&kv.value)),
                    other => panic!("a failed txn answered {other:?} to its range"),
                };
                Output::Cas { ok: false, seen }
            }
        }
    })
}

/// One client: random operations on random keys through random members until `until`.
async fn client(
    id: usize,
    seed: u64,
    members: Vec<Channel>,
    start: Instant,
    until: Instant,
    history: Arc<Mutex<Vec<Op>>>,
) {
    let mut rng = Rng(seed ^ (id as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
    let mut last: [Option<u64>; KEYS] = [None; KEYS];
    let mut seq = 0u64;
    let now = || start.elapsed().as_nanos() as u64;
    while Instant::now() < until {
        let key = rng.below(KEYS as u64) as usize;
        let member = rng.below(members.len() as u64) as usize;
        seq += 1;
        // Unique across the run: the client in the high bits.
        let fresh = ((id as u64 + 1) << 40) | seq;
        let input = match (rng.below(10), last[key]) {
            (0..=3, _) => Input::Get,
            (7..=9, Some(expect)) => Input::Cas { expect, new: fresh },
            _ => Input::Put(fresh),
        };
        let call = now();
        let answer = tokio::time::timeout(
            Duration::from_secs(3),
            do_op(members[member].clone(), key, input),
        )
        .await;
        let ret = now();
        let (output, ret) = match answer {
            Ok(Ok(out)) => (out, Some(ret)),
            _ => (Output::Unknown, None),
        };
        match output {
            Output::Get(v) | Output::Cas { seen: v, ok: false } => last[key] = v,
            Output::Put | Output::Cas { ok: true, .. } => last[key] = written(input),
            Output::Unknown => {}
        }
        history.lock().expect("history").push(Op {
            client: id,
            member,
            key,
            input,
            output,
            call,
            ret,
        });
        if output == Output::Unknown {
            tokio::time::sleep(rng.millis(20, 100)).await;
        }
    }
}

/// The faults: one episode after another, each broken for a while and then repaired.
fn faults(
    c: &mut NetCluster,
    rt: &tokio::runtime::Runtime,
    rng: &mut Rng,
    until: Instant,
) -> Vec<String> {
    let n = c.members.len();
    let mut log = Vec::new();
    let start = Instant::now();
    while Instant::now() < until {
        std::thread::sleep(rng.millis(300, 1500));
        if Instant::now() >= until {
            break;
        }
        let all: Vec<usize> = (0..n).collect();
        let leader = rt.block_on(c.leader_among(&all));
        let random = rng.below(n as u64) as usize;
        let target = match (rng.below(2), leader) {
            (0, Some(l)) => l,
            _ => random,
        };
        let other = (target + 1 + rng.below(n as u64 - 1) as usize) % n;
        let kind = rng.below(7);
        let hold = rng.millis(500, 3000);
        let what = match kind {
            0 | 1 => {
                c.members[target].kill9();
                format!("kill m{target}")
            }
            2 | 3 => {
                c.isolate(target);
                format!("isolate m{target}")
            }
            4 => {
                // A partial partition: both still see the third member.
                c.cut(target, other);
                format!("cut m{target} - m{other}")
            }
            _ => {
                // Two faults at once: no quorum for a while.
                c.members[target].kill9();
                c.isolate(other);
                format!("kill m{target} + isolate m{other}")
            }
        };
        let at = start.elapsed().as_secs_f64();
        eprintln!(
            "[{at:6.2}s] {what} (leader was {}) for {:?}",
            leader.map_or("?".to_string(), |l| format!("m{l}")),
            hold
        );
        log.push(format!("{at:.2}s {what} for {hold:?}"));
        std::thread::sleep(hold);
        c.heal_all();
        for m in &mut c.members {
            if !m.running() {
                m.spawn();
            }
        }
        for m in &mut c.members {
            m.wait_ready(rt);
        }
    }
    log
}

#[test]
fn linearizable_under_kills_and_partitions() {
    let seed = env_u64("LINEARIZABILITY_SEED").unwrap_or(DEFAULT_SEED);
    let seconds = env_u64("LINEARIZABILITY_SECONDS").unwrap_or(60);
    eprintln!(
        "linearizability: LINEARIZABILITY_SEED={seed:#x} LINEARIZABILITY_SECONDS={seconds} \
         ({CLIENTS} clients, {KEYS} keys, 3 members)"
    );
    let rt = rt();
    let _enter = rt.enter();
    // Frequent snapshots and a short log: members coming back are often sent a snapshot.
    let extra = [
        "--snapshot-count",
        "200",
        "--experimental-snapshot-catchup-entries",
        "50",
    ];
    let mut c = NetCluster::start(3, &extra, &rt);
    let start = Instant::now();
    let now = || start.elapsed().as_nanos() as u64;
    let history = Arc::new(Mutex::new(Vec::new()));

    // Every key starts with a value, so compare-and-swap has something to compare with.
    for k in 0..KEYS {
        let v = (0xFFu64 << 40) | k as u64;
        let call = now();
        eventually("an initial write", || {
            rt.block_on(do_op(
                c.members[0].channel(Duration::from_secs(3)),
                k,
                Input::Put(v),
            ))
            .ok()
        });
        history.lock().expect("history").push(Op {
            client: CLIENTS,
            member: 0,
            key: k,
            input: Input::Put(v),
            output: Output::Put,
            call,
            ret: Some(now()),
        });
    }

    let until = Instant::now() + Duration::from_secs(seconds);
    let channels: Vec<Channel> = c
        .members
        .iter()
        .map(|m| m.channel(Duration::from_secs(2)))
        .collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            rt.spawn(client(
                id,
                seed,
                channels.clone(),
                start,
                until,
                history.clone(),
            ))
        })
        .collect();
    let mut rng = Rng(seed);
    let schedule = faults(&mut c, &rt, &mut rng, until);
    for cl in clients {
        rt.block_on(cl).expect("client task");
    }

    // All repaired: every member must now read the last value of every key.
    c.heal_all();
    for (i, ch) in channels.iter().enumerate() {
        for k in 0..KEYS {
            let call = now();
            let out = eventually("a final read", || {
                rt.block_on(do_op(ch.clone(), k, Input::Get)).ok()
            });
            history.lock().expect("history").push(Op {
                client: CLIENTS + 1 + i,
                member: i,
                key: k,
                input: Input::Get,
                output: out,
                call,
                ret: Some(now()),
            });
        }
    }
    let (rev, _) = c.converge(&rt);

    let history = std::mem::take(&mut *history.lock().expect("history"));
    let count = |f: &dyn Fn(&Op) -> bool| history.iter().filter(|o| f(o)).count();
    eprintln!(
        "history: {} operations ({} gets, {} puts, {} CAS of which {} succeeded), {} open-ended; \
         {} fault episodes; converged at revision {rev}",
        history.len(),
        count(&|o| o.input == Input::Get),
        count(&|o| matches!(o.input, Input::Put(_))),
        count(&|o| matches!(o.input, Input::Cas { .. })),
        count(&|o| matches!(o.output, Output::Cas { ok: true, .. })),
        count(&|o| o.ret.is_none()),
        schedule.len(),
    );
    let mut failures = Vec::new();
    for k in 0..KEYS {
        let ops: Vec<Op> = history.iter().filter(|o| o.key == k).cloned().collect();
        let t = Instant::now();
        let verdict = check_key(&ops);
        eprintln!(
            "key {k}: {} operations checked in {:?}: {}",
            ops.len(),
            t.elapsed(),
            if verdict.is_ok() {
                "linearizable"
            } else {
                "NOT linearizable"
            }
        );
        if let Err(v) = verdict {
            let detail = match &v.stuck {
                Some(stuck) => format!(
                    "no linearization places\n  {}\n(after {} operations, value then {:?}); \
                     operations around it:\n{}",
                    show(stuck),
                    v.placed,
                    v.state,
                    excerpt(&ops, stuck)
                ),
                None => "no operation could be placed first".to_string(),
            };
            failures.push(format!(
                "key {k} {}: {detail}",
                if v.gave_up {
                    "(search gave up, no verdict)"
                } else {
                    "is not linearizable"
                }
            ));
        }
    }
    let distinct: BTreeSet<u64> = history.iter().filter_map(|o| written(o.input)).collect();
    assert_eq!(
        distinct.len(),
        count(&|o| written(o.input).is_some()),
        "values written must be unique"
    );
    if !failures.is_empty() {
        let path = std::env::temp_dir().join(format!(
            "linearizability-{seed:x}-{}.history",
            std::process::id()
        ));
        let mut all: Vec<&Op> = history.iter().collect();
        all.sort_by_key(|o| o.call);
        let text: Vec<String> = all.iter().map(|o| show(o)).collect();
        let _ = std::fs::write(&path, text.join("\n") + "\n");
        failures.push(format!("the whole history is in {}", path.display()));
    }
    assert!(
        failures.is_empty(),
        "LINEARIZABILITY_SEED={seed:#x}: {}\nfault schedule:\n{}",
        failures.join("\n\n"),
        schedule.join("\n")
    );
}
