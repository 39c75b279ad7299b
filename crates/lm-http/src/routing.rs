//! Which server answers which prefix. Engines cache the key-value states of the prompts they
//! served, so a particle's next request is cheap on the server that served its previous one
//! (only the new token is computed) and costs a recomputation of its prefix elsewhere. A lineage
//! therefore stays on its server: a session remembers each particle's server, resampled copies
//! inherit their ancestor's, and a new prefix (the prompt alone) goes where there is room. Since
//! lineages coalesce under resampling, pure stickiness would end with every particle on one
//! server; each step therefore caps a server's share at ceil(U / S) of the U distinct prefixes,
//! and the overflow moves to the least-loaded server (one recomputation, then sticky again).
//! Routing never changes an answer (replicas serve one model), only where it is computed.

/// The server of each of `preferred.len()` distinct prefixes: its lineage's server
/// (`preferred[u]`) when that server is usable and under its share, else the usable server with
/// the fewest prefixes so far (ties broken in the order `offset`, `offset + 1`, ... so that
/// successive calls spread new lineages). `usable[s]`: whether server `s` takes new work; when
/// none does, all are used.
pub(crate) fn assign(preferred: &[Option<usize>], usable: &[bool], offset: usize) -> Vec<usize> {
    let n = usable.len();
    if n == 0 {
        return Vec::new();
    }
    let mut servers: Vec<usize> = (0..n).filter(|&s| usable[s]).collect();
    if servers.is_empty() {
        servers = (0..n).collect();
    }
    let share = preferred.len().div_ceil(servers.len());
    let mut load = vec![0usize; n];
    let mut out: Vec<Option<usize>> = preferred
        .iter()
        .map(|&p| {
            let s = p.filter(|&s| s < n && servers.contains(&s) && load[s] < share)?;
            load[s] += 1;
            Some(s)
        })
        .collect();
    let order: Vec<usize> = (0..servers.len())
        .map(|i| servers[(offset + i) % servers.len()])
        .collect();
    for slot in out.iter_mut().filter(|s| s.is_none()) {
        let s = *order
            .iter()
            .min_by_key(|&&s| load[s])
            .expect("at least one server");
        load[s] += 1;
        *slot = Some(s);
    }
    out.into_iter().map(|s| s.unwrap_or(0)).collect()
}

/// The order in which jobs assigned to servers are started: one for each server in turn, so
/// that every server has work from the start.
pub(crate) fn interleaved(assigned: &[usize], servers: usize) -> Vec<usize> {
    let mut queues: Vec<Vec<usize>> = vec![Vec::new(); servers.max(1)];
    for (job, &s) in assigned.iter().enumerate() {
        queues[s.min(servers.saturating_sub(1))].push(job);
    }
    let longest = queues.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| queues.iter().filter_map(move |q| q.get(i).copied()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(assigned: &[usize], n: usize) -> Vec<usize> {
        let mut l = vec![0; n];
        for &s in assigned {
            l[s] += 1;
        }
        l
    }

    #[test]
    fn lineages_stay_on_their_server_within_its_share() {
        let a = assign(&[Some(1), Some(0), Some(1), Some(0)], &[true, true], 0);
        assert_eq!(a, vec![1, 0, 1, 0]);
    }

    #[test]
    fn a_coalesced_population_is_spread_evenly() {
        // Every particle descends from one lineage on server 0.
        let a = assign(&[Some(0); 7], &[true, true, true], 0);
        assert_eq!(&a[..3], &[0, 0, 0]);
        assert_eq!(loads(&a, 3), vec![3, 2, 2]);
    }

    #[test]
    fn new_prefixes_rotate_over_calls() {
        let first: Vec<usize> = (0..6)
            .map(|call| assign(&[None], &[true; 3], call)[0])
            .collect();
        assert_eq!(first, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn servers_that_failed_get_no_new_work_unless_all_did() {
        let a = assign(&[Some(1), Some(1), None, Some(0)], &[true, false], 0);
        assert_eq!(a, vec![0, 0, 0, 0]);
        let a = assign(&[Some(1), None], &[false, false], 0);
        assert_eq!(a, vec![1, 0]);
    }

    #[test]
    fn jobs_start_one_server_at_a_time() {
        assert_eq!(interleaved(&[0, 0, 0, 1, 1, 2], 3), vec![0, 3, 5, 1, 4, 2]);
    }
}
