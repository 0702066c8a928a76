//! Where a process sits in a multi-process run, from the launcher's environment: torchrun (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), Slurm's srun (`SLURM_PROCID`, `SLURM_NTASKS`,
//! `SLURM_LOCALID`) or Open MPI's mpirun (`OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`,
//! `OMPI_COMM_WORLD_LOCAL_RANK`). The device is `cuda:LOCAL_RANK`.

use crate::error::{Result, TrainError};

/// This process's place in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    /// Rank 0's address for the rendezvous (torchrun's MASTER_ADDR:MASTER_PORT), if the launcher gives one.
    pub master: Option<(String, u16)>,
    /// Which launcher's variables were read.
    pub launcher: &'static str,
}

impl Launch {
    /// From an environment (a lookup, so tests need not touch the process's); None when no launcher's
    /// variables are set (a single-process run).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let schemes: [(&str, [&str; 3]); 3] = [
            ("torchrun", ["RANK", "WORLD_SIZE", "LOCAL_RANK"]),
            ("slurm", ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"]),
            ("mpirun", ["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"]),
        ];
        for (launcher, keys) in schemes {
            if get(keys[0]).is_none() || get(keys[1]).is_none() {
                continue;
            }
            let num = |k: &str| -> Result<usize> {
                let v = get(k).ok_or_else(|| TrainError::Config(format!("{launcher}: {k} is not set")))?;
                v.trim().parse().map_err(|_| TrainError::Config(format!("{launcher}: {k} = {v:?} is not a number")))
            };
            let (rank, world) = (num(keys[0])?, num(keys[1])?);
            let local_rank = if get(keys[2]).is_some() { num(keys[2])? } else { 0 };
            if world == 0 || rank >= world {
                return Err(TrainError::Config(format!("{launcher}: rank {rank} of world size {world}")));
            }
            let master = match (get("MASTER_ADDR"), get("MASTER_PORT")) {
                (Some(a), Some(p)) => Some((a, p.trim().parse().map_err(|_| TrainError::Config(format!("MASTER_PORT = {p:?} is not a port")))?)),
                _ => None,
            };
            return Ok(Some(Self { rank, world, local_rank, master, launcher }));
        }
        Ok(None)
    }

    /// The device this rank trains on.
    pub fn device_name(&self) -> String {
        format!("cuda:{}", self.local_rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn launchers_are_read() {
        let t = Launch::from_env(env(&[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "3"), ("MASTER_ADDR", "node1"), ("MASTER_PORT", "29500")])).unwrap().unwrap();
        assert_eq!((t.rank, t.world, t.local_rank, t.launcher), (3, 8, 3, "torchrun"));
        assert_eq!(t.master, Some(("node1".into(), 29500)));
        assert_eq!(t.device_name(), "cuda:3");
        let s = Launch::from_env(env(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "16"), ("SLURM_LOCALID", "1")])).unwrap().unwrap();
        assert_eq!((s.rank, s.world, s.local_rank, s.launcher), (5, 16, 1, "slurm"));
        let m = Launch::from_env(env(&[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_LOCAL_RANK", "0")])).unwrap().unwrap();
        assert_eq!(m.launcher, "mpirun");
        assert!(Launch::from_env(env(&[])).unwrap().is_none());
        for bad in [[("RANK", "x"), ("WORLD_SIZE", "2")], [("RANK", "2"), ("WORLD_SIZE", "2")]] {
            assert!(Launch::from_env(env(&bad)).is_err());
        }
    }
}
