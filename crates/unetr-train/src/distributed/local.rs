//! An in-process group: ranks are threads of one process, the collectives go through shared memory. A test
//! double for the data-parallel trainer (the NCCL group is what runs on GPUs); sums are taken in rank order,
//! so results do not depend on which thread arrives first.

use super::{timeout_error, Communicator};
use crate::error::{Result, TrainError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

struct State {
    generation: u64,
    /// Per rank, its buffer of the collective in progress.
    bufs: Vec<Option<Vec<f32>>>,
    result: Arc<Vec<f32>>,
    aborted: Option<String>,
}

struct Shared {
    world: usize,
    state: Mutex<State>,
    cv: Condvar,
    timeout: Duration,
}

/// One rank of an in-process group.
pub struct LocalComm {
    rank: usize,
    shared: Arc<Shared>,
}

/// `world` communicators, one per rank (hand each to its thread).
pub fn local_group(world: usize, timeout: Duration) -> Vec<LocalComm> {
    let shared = Arc::new(Shared {
        world,
        state: Mutex::new(State { generation: 0, bufs: vec![None; world], result: Arc::new(Vec::new()), aborted: None }),
        cv: Condvar::new(),
        timeout,
    });
    (0..world).map(|rank| LocalComm { rank, shared: shared.clone() }).collect()
}

impl LocalComm {
    /// Contributes `buf`, waits for every rank, and returns the rank-ordered sum.
    fn exchange(&self, buf: &[f32], what: &str) -> Result<Arc<Vec<f32>>> {
        let sh = &self.shared;
        let mut st = sh.state.lock().map_err(|_| TrainError::Config("communicator poisoned".into()))?;
        if let Some(why) = &st.aborted {
            return Err(TrainError::Config(format!("rank {}: group aborted: {why}", self.rank)));
        }
        let gen = st.generation;
        st.bufs[self.rank] = Some(buf.to_vec());
        if st.bufs.iter().all(Option::is_some) {
            let bufs: Vec<Vec<f32>> = st.bufs.iter_mut().map(|b| b.take().unwrap_or_default()).collect();
            if bufs.iter().any(|b| b.len() != buf.len()) {
                st.aborted = Some(format!("{what}: the ranks passed buffers of different lengths"));
                sh.cv.notify_all();
                return Err(TrainError::Config(format!("{what}: ranks disagree on the buffer length")));
            }
            let mut sum = vec![0f32; buf.len()];
            for b in &bufs {
                for (s, x) in sum.iter_mut().zip(b) {
                    *s += x;
                }
            }
            st.result = Arc::new(sum);
            st.generation += 1;
            sh.cv.notify_all();
            return Ok(st.result.clone());
        }
        let deadline = Instant::now() + sh.timeout;
        while st.generation == gen {
            if let Some(why) = &st.aborted {
                return Err(TrainError::Config(format!("rank {}: group aborted: {why}", self.rank)));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                st.aborted = Some(format!("rank {} timed out at {what}", self.rank));
                sh.cv.notify_all();
                return Err(timeout_error(what, self.rank, sh.timeout));
            }
            st = sh.cv.wait_timeout(st, left).map_err(|_| TrainError::Config("communicator poisoned".into()))?.0;
        }
        Ok(st.result.clone())
    }
}

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.shared.world
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let r = self.exchange(buf, "all-reduce")?;
        buf.copy_from_slice(&r);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.exchange(&[], "barrier").map(|_| ())
    }
    fn abort(&self, why: &str) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.aborted.get_or_insert_with(|| format!("rank {}: {why}", self.rank));
            self.shared.cv.notify_all();
        }
    }
    fn timeout(&self) -> Duration {
        self.shared.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_reduce_sums_in_rank_order_and_aborts_and_timeouts_end_waits() {
        let g = local_group(3, Duration::from_secs(5));
        let out: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = g
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        let mut b = vec![c.rank() as f32 + 1.0, 10.0];
                        c.all_reduce_sum(&mut b).unwrap();
                        c.barrier().unwrap();
                        b
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(out.iter().all(|b| b == &[6.0, 30.0]));
        // A rank that gives up wakes the others with an error.
        let g = local_group(2, Duration::from_secs(30));
        let e = std::thread::scope(|s| {
            let h = s.spawn(|| g[0].barrier());
            std::thread::sleep(Duration::from_millis(50));
            g[1].abort("data error");
            h.join().unwrap()
        });
        assert!(e.unwrap_err().to_string().contains("data error"));
        // A rank nobody joins times out with a clear error.
        let g = local_group(2, Duration::from_millis(100));
        let e = g[0].barrier().unwrap_err().to_string();
        assert!(e.contains("waited") && e.contains("barrier"), "{e}");
    }
}
