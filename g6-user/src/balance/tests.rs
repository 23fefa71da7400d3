use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::config::Algorithm::{self, *};

const UP: Candidate = Candidate {
    available: true,
    full: false,
    tried: false,
    active: 0,
    rt_us: None,
};
const DOWN: Candidate = Candidate {
    available: false,
    ..UP
};
const FULL: Candidate = Candidate { full: true, ..UP };
const TRIED: Candidate = Candidate { tried: true, ..UP };

fn client() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("127.0.0.1:{}", 18701 + i)).collect()
}

/// Pick once per candidate state, returning `(chosen, pointer after)` for each.
fn run(sel: &mut Selector, script: &[&[Candidate]]) -> Vec<(Option<usize>, usize)> {
    script
        .iter()
        .map(|c| (sel.pick(c, client(), &texts(c.len())), sel.pointer()))
        .collect()
}

fn picks(sel: &mut Selector, script: &[&[Candidate]]) -> Vec<Option<usize>> {
    run(sel, script).into_iter().map(|(c, _)| c).collect()
}

#[test]
fn round_robin_strict_cycle() {
    let mut sel = Selector::new(RoundRobin);
    let all = [UP; 3];
    assert_eq!(
        run(&mut sel, &[&all[..]; 7]),
        [
            (Some(0), 1),
            (Some(1), 2),
            (Some(2), 0),
            (Some(0), 1),
            (Some(1), 2),
            (Some(2), 0),
            (Some(0), 1)
        ]
    );
}

#[test]
fn round_robin_skips_ineligible() {
    let mut sel = Selector::new(RoundRobin);
    let one_down = [UP, DOWN, UP];
    let got = picks(
        &mut sel,
        &[
            &one_down,
            &one_down,
            &one_down,
            &[UP; 3],
            &[UP, FULL, UP],
            &[TRIED, UP, UP],
        ],
    );
    // 0, skip 1 → 2, wrap → 0, 1 is back → 1, 2, then 0 failed for this client → 1.
    assert_eq!(got, [Some(0), Some(2), Some(0), Some(1), Some(2), Some(1)]);
    assert_eq!(sel.pointer(), 2);
}

#[test]
fn master_standby_stickiness_and_no_fail_back() {
    let mut sel = Selector::new(MasterStandby);
    let all = [UP; 3];
    let got = run(
        &mut sel,
        &[
            &all,
            &all,
            &[FULL, UP, UP],   // master full for this client: standby serves, p stays
            &all,              // back on the master
            &[DOWN, UP, UP],   // master isolated: p moves to 1
            &all,              // master recovered: no fail-back
            &[UP, DOWN, UP],   // standby isolated: next in list order
            &[DOWN, UP, DOWN], // wraps to 1
        ],
    );
    assert_eq!(
        got,
        [
            (Some(0), 0),
            (Some(0), 0),
            (Some(1), 0),
            (Some(0), 0),
            (Some(1), 1),
            (Some(1), 1),
            (Some(2), 2),
            (Some(1), 1),
        ]
    );
}

#[test]
fn master_standby_failure_for_this_client_moves_pointer() {
    let mut sel = Selector::new(MasterStandby);
    // Master failed with moratorium 0: still available, but failed for this client.
    assert_eq!(
        run(&mut sel, &[&[TRIED, UP], &[UP, UP]]),
        [(Some(1), 1), (Some(1), 1)]
    );
    // Full at p together with isolated: isolated wins, p moves.
    let mut sel = Selector::new(MasterStandby);
    let full_down = Candidate {
        available: false,
        full: true,
        ..UP
    };
    assert_eq!(run(&mut sel, &[&[full_down, UP]]), [(Some(1), 1)]);
}

#[test]
fn least_connections_ties_in_scan_order() {
    let lc = |active: [u32; 3]| active.map(|a| Candidate { active: a, ..UP });
    let mut sel = Selector::new(LeastConnections);
    let got = run(
        &mut sel,
        &[
            &lc([2, 1, 1]),
            &lc([2, 2, 1]),
            &lc([0, 0, 0]),
            &lc([0, 0, 0]),
            &lc([0, 0, 0]),
            &lc([5, 0, 0]),
        ],
    );
    assert_eq!(
        got,
        [
            (Some(1), 2),
            (Some(2), 0),
            (Some(0), 1),
            (Some(1), 2),
            (Some(2), 0),
            (Some(1), 2)
        ]
    );
    let mut least_down = lc([3, 0, 1]);
    least_down[1].available = false;
    assert_eq!(picks(&mut sel, &[&least_down]), [Some(2)]);
}

#[test]
fn response_time_unsampled_first() {
    let rt = |v: [Option<u64>; 3]| v.map(|r| Candidate { rt_us: r, ..UP });
    let mut sel = Selector::new(ResponseTime);
    let got = run(
        &mut sel,
        &[
            &rt([Some(100), None, Some(50)]),
            &rt([Some(100), Some(80), None]),
            &rt([Some(100), Some(80), Some(50)]),
            &rt([Some(7), Some(7), Some(7)]), // tie: scan order from p = 0
            &rt([Some(7), Some(7), Some(7)]),
            &rt([None, None, Some(1)]), // tie among unsampled from p = 2 → wraps to 0
        ],
    );
    assert_eq!(
        got,
        [
            (Some(1), 2),
            (Some(2), 0),
            (Some(2), 0),
            (Some(0), 1),
            (Some(1), 2),
            (Some(0), 1)
        ]
    );
}

#[test]
fn hash_score_vectors() {
    // Computed independently (Python) from the SPEC.md §6 definition.
    assert_eq!(
        hash_score(client(), "127.0.0.1:18701"),
        0xb380_4ee9_664c_1aa2
    );
    assert_eq!(
        hash_score(client(), "127.0.0.1:18702"),
        0xe0ec_fe54_f472_6abc
    );
    assert_eq!(
        hash_score("::1".parse().unwrap(), "[::1]:8080"),
        0x1581_03c1_ef1e_de9a
    );
    assert_eq!(
        hash_score("10.1.2.3".parse().unwrap(), "[2001:db8::1]:443"),
        0xb089_54e6_8a0d_f6dc
    );
}

#[test]
fn hash_refuses_when_target_not_eligible() {
    let t = texts(2);
    let mut sel = Selector::new(Hash);
    assert_eq!(
        sel.pick(&[UP, UP], client(), &t),
        Some(1),
        "0xe0ec… > 0xb380…"
    );
    for bad in [DOWN, FULL, TRIED] {
        assert_eq!(sel.pick(&[UP, bad], client(), &t), None, "no fallback");
    }
    assert_eq!(sel.pick(&[DOWN, UP], client(), &t), Some(1));
    assert_eq!(sel.pointer(), 0);
}

#[test]
fn hash_tie_keeps_earlier_server() {
    let same = vec!["10.0.0.1:80".to_owned(); 3];
    assert_eq!(Selector::new(Hash).pick(&[UP; 3], client(), &same), Some(0));
}

#[test]
fn refusals() {
    for alg in [
        Admin,
        MasterStandby,
        RoundRobin,
        LeastConnections,
        ResponseTime,
        Random,
        Hash,
    ] {
        let mut sel = Selector::new(alg);
        assert_eq!(sel.pick(&[], client(), &[]), None, "{alg}: no servers");
        assert_eq!(
            picks(&mut sel, &[&[DOWN, FULL, TRIED]]),
            [None],
            "{alg}: none eligible"
        );
        assert_eq!(sel.pointer(), 0, "{alg}: no pick, no move");
    }
    assert_eq!(
        picks(&mut Selector::new(Admin), &[&[UP; 2]]),
        [None],
        "G rules never pick"
    );
}

#[test]
fn pointer_survives_a_shrunk_list() {
    let mut sel = Selector::new(RoundRobin);
    picks(&mut sel, &[&[UP; 4], &[UP; 4], &[UP; 4]]);
    assert_eq!(sel.pointer(), 3);
    // Reload left two servers: 3 mod 2 = 1.
    assert_eq!(
        run(&mut sel, &[&[UP; 2], &[UP; 2]]),
        [(Some(1), 0), (Some(0), 1)]
    );
}

#[test]
fn rt_update_formula() {
    assert_eq!(rt_update(None, 1000), 1000);
    assert_eq!(rt_update(Some(1000), 2000), 1250);
    assert_eq!(rt_update(Some(1000), 0), 750);
    assert_eq!(rt_update(Some(10), 7), 10, "(-3)/4 truncates toward zero");
    assert_eq!(rt_update(Some(u64::MAX), 0), u64::MAX - u64::MAX / 4);
    assert_eq!(rt_update(Some(0), u64::MAX), u64::MAX / 4);
}

fn candidate() -> impl Strategy<Value = Candidate> {
    (
        any::<bool>(),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        0u32..4,
        prop::option::of(0u64..4),
    )
        .prop_map(|(available, full, tried, active, rt_us)| Candidate {
            available,
            full,
            tried,
            active,
            rt_us,
        })
}

fn alg() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(vec![
        MasterStandby,
        RoundRobin,
        LeastConnections,
        ResponseTime,
        Random,
        Hash,
    ])
}

/// Distinct server texts as `show rules` prints them, IPv4 and IPv6.
fn servers(range: std::ops::Range<usize>) -> impl Strategy<Value = Vec<String>> {
    prop::collection::hash_set(any::<SocketAddr>(), range)
        .prop_map(|set| set.iter().map(crate::config::fmt_addr).collect())
}

proptest! {
    #[test]
    fn pick_only_eligible(
        alg in alg(),
        seed in any::<u64>(),
        rounds in prop::collection::vec(
            (prop::collection::vec(candidate(), 0..7), any::<IpAddr>()),
            1..20,
        ),
    ) {
        let mut sel = Selector::with_seed(alg, seed);
        for (cands, ip) in rounds {
            let got = sel.pick(&cands, ip, &texts(cands.len()));
            if let Some(i) = got {
                prop_assert!(cands[i].eligible());
            } else if alg != Hash {
                let any_free = cands.iter().any(Candidate::eligible);
                prop_assert!(!any_free, "{alg} refused with a server free");
            }
            prop_assert!(cands.is_empty() || sel.pointer() < cands.len() || got.is_none());
        }
    }

    #[test]
    fn scan_algorithms_cycle_like_rr_when_all_equal(
        alg in prop::sample::select(vec![RoundRobin, LeastConnections, ResponseTime]),
        n in 1usize..6,
    ) {
        let mut sel = Selector::new(alg);
        let all = vec![Candidate { active: 3, rt_us: Some(9), ..UP }; n];
        for k in 0..3 * n {
            prop_assert_eq!(sel.pick(&all, client(), &texts(n)), Some(k % n));
        }
    }

    #[test]
    fn rt_update_matches_signed_formula(
        old in prop::option::of(any::<u64>()),
        sample in any::<u64>(),
    ) {
        let want = match old {
            None => sample,
            Some(rt) => (i128::from(rt) + (i128::from(sample) - i128::from(rt)) / 4) as u64,
        };
        prop_assert_eq!(rt_update(old, sample), want);
    }

    #[test]
    fn hash_is_deterministic(
        servers in servers(1..10),
        ip in any::<IpAddr>(),
        seeds in any::<(u64, u64)>(),
    ) {
        let cands = vec![UP; servers.len()];
        let a = Selector::with_seed(Hash, seeds.0).pick(&cands, ip, &servers);
        let mut b = Selector::with_seed(Hash, seeds.1);
        prop_assert!(a.is_some());
        for _ in 0..3 {
            prop_assert_eq!(b.pick(&cands, ip, &servers), a);
        }
    }

    #[test]
    fn hash_removal_moves_only_the_removed_servers_clients(
        servers in servers(2..12),
        clients in prop::collection::vec(any::<IpAddr>(), 1..64),
        removed in any::<Index>(),
    ) {
        let removed = removed.index(servers.len());
        let mut fewer = servers.clone();
        let gone = fewer.remove(removed);
        let mut sel = Selector::new(Hash);
        for ip in clients {
            let before = &servers[sel.pick(&vec![UP; servers.len()], ip, &servers).unwrap()];
            let after = &fewer[sel.pick(&vec![UP; fewer.len()], ip, &fewer).unwrap()];
            if *before != gone {
                prop_assert_eq!(before, after);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Chi-square goodness of fit against the uniform distribution over eligible servers; the
    /// bound (≈ p < 1e-8 for df ≤ 7) still fails any systematic bias at 2000 draws a bucket.
    #[test]
    fn random_is_uniform_over_eligible(
        mask in prop::collection::vec(any::<bool>(), 1..9),
        seed in any::<u64>(),
    ) {
        let cands: Vec<_> = mask.iter().map(|&up| if up { UP } else { DOWN }).collect();
        let eligible: HashSet<usize> = (0..cands.len()).filter(|&i| mask[i]).collect();
        let mut sel = Selector::with_seed(Random, seed);
        let draws = 2000 * eligible.len();
        let mut counts = vec![0u32; cands.len()];
        for _ in 0..draws {
            match sel.pick(&cands, client(), &[]) {
                Some(i) => counts[i] += 1,
                None => prop_assert!(eligible.is_empty()),
            }
        }
        prop_assert_eq!(sel.pointer(), 0);
        if eligible.len() > 1 {
            let chi2: f64 =
                eligible.iter().map(|&i| (f64::from(counts[i]) - 2000.0).powi(2) / 2000.0).sum();
            let df = (eligible.len() - 1) as f64;
            prop_assert!(chi2 < 3.0 * df + 30.0, "chi2 {chi2} df {df} counts {counts:?}");
        }
        for (i, &count) in counts.iter().enumerate() {
            prop_assert_eq!(count > 0, eligible.contains(&i));
        }
    }
}
