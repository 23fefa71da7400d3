//! The pointer-driven algorithms. Each takes the candidates and `start` (= `p mod n`, so
//! `start < candidates.len()`) and returns `(chosen, new p)`, or `None` when no server is
//! eligible (then `p` stays put: nothing was picked).

use super::Candidate;

/// Eligible indexes in list order from `start`, wrapping.
fn scan(candidates: &[Candidate], start: usize) -> impl Iterator<Item = usize> + '_ {
    let n = candidates.len();
    (0..n)
        .map(move |k| (start + k) % n)
        .filter(|&i| candidates[i].eligible())
}

/// First eligible server from `p`. `p` follows the choice only when the server at `p` is
/// isolated or failed for this client: a master that is merely full for one client keeps the
/// pointer, and once moved the pointer stays on the standby (no fail-back).
pub(super) fn master_standby(candidates: &[Candidate], start: usize) -> Option<(usize, usize)> {
    let chosen = scan(candidates, start).next()?;
    let at_p = &candidates[start];
    let p = if !at_p.available || at_p.tried {
        chosen
    } else {
        start
    };
    Some((chosen, p))
}

/// First eligible server from `p`; then `p` = chosen+1, a strict cycle in list order.
pub(super) fn round_robin(candidates: &[Candidate], start: usize) -> Option<(usize, usize)> {
    let chosen = scan(candidates, start).next()?;
    Some((chosen, (chosen + 1) % candidates.len()))
}

/// Fewest active connections; ties go to the first in scan order (`min_by_key` keeps the
/// first minimum).
pub(super) fn least_connections(candidates: &[Candidate], start: usize) -> Option<(usize, usize)> {
    let chosen = scan(candidates, start).min_by_key(|&i| candidates[i].active)?;
    Some((chosen, (chosen + 1) % candidates.len()))
}

/// Servers without a sample first (so each gets measured), then the lowest RT; ties go to the
/// first in scan order.
pub(super) fn response_time(candidates: &[Candidate], start: usize) -> Option<(usize, usize)> {
    let chosen = scan(candidates, start).min_by_key(|&i| {
        let rt = candidates[i].rt_us;
        (rt.is_some(), rt.unwrap_or(0))
    })?;
    Some((chosen, (chosen + 1) % candidates.len()))
}
