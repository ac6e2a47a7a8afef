//! Oracle passes shared by several processes, for problems whose batches are too large for one
//! machine's cores ([`crate::oracles::Oracles::distributed`]).
//!
//! Every process draws the same batch (the batch generator is seeded alike everywhere), computes
//! its own shards of each pass on its threads, adds them, and the processes exchange these
//! partial sums with one all-gather; each then adds all of them in rank order. So every process
//! holds bit-identical results, and a method's state evolves identically everywhere without
//! ever being sent. With one thread per process the sum is the one of a single process with
//! one thread per shard ([`crate::oracles::Oracles::sharded`]), bit for bit.
//!
//! [`ProcessGroup`] is what the oracles need from the processes; the `mpi` feature provides it
//! over MPI (`Mpi`), which every cluster has and which launches processes across machines.

#[cfg(feature = "mpi")]
mod mpi_group;
mod wire;

#[cfg(feature = "mpi")]
pub use mpi_group::Mpi;
pub(crate) use wire::{Reader, Wire};

use crate::error::BilevelError;

/// The processes that share each oracle pass, as the oracles see them: this process's rank, how
/// many there are, and one collective.
pub trait ProcessGroup: Send + Sync {
    /// This process's rank, in `0..size()`.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn size(&self) -> usize;
    /// Every process's `local` bytes in rank order, on every process. Each process must call it
    /// at the same point; the messages may differ in length.
    fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>, BilevelError>;
    /// Ends every process of the group with exit code `code`: what a process that failed must
    /// do, since the others would otherwise wait forever in their next collective.
    fn abort(&self, code: i32) -> !;
    /// The bytes this process has received from the others so far (the measure of a
    /// distributed run's communication); 0 for a group that does not count.
    fn bytes_received(&self) -> u64 {
        0
    }
}

/// Whether this process was started by an MPI launcher (`mpirun`, `mpiexec`, `srun`), read from
/// the environment such launchers set. A program built without the `mpi` feature can use it to
/// refuse to run as many copies that would each do the whole job.
pub fn launched_by_mpi() -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

/// Fails unless every process holds the same `state` bytes, naming what was compared (`what`,
/// e.g. "x, y and the method's state at iteration 300") and the ranks that differ from rank 0.
/// The processes exchange an 8-byte digest, not the state.
pub fn check_agreement(
    group: &dyn ProcessGroup,
    what: &str,
    state: &[u8],
) -> Result<(), BilevelError> {
    let digest = digest(state);
    let all = group.all_gather(&digest.to_le_bytes())?;
    let digests: Vec<u64> = all
        .iter()
        .map(|d| u64::from_le_bytes(d.as_slice().try_into().unwrap_or([0; 8])))
        .collect();
    let differ: Vec<String> = digests
        .iter()
        .enumerate()
        .filter(|&(_, &d)| d != digests[0])
        .map(|(rank, _)| rank.to_string())
        .collect();
    if differ.is_empty() {
        Ok(())
    } else {
        Err(BilevelError::Distributed(format!(
            "the processes disagree on {what}: rank(s) {} differ from rank 0 (digests {:016x?}); \
             they must run the same build, data and configuration",
            differ.join(", "),
            digests
        )))
    }
}

/// A 64-bit digest of `bytes` (FNV-1a folded over 8-byte words, with the length), enough to
/// detect processes whose states drifted apart; not a cryptographic hash.
pub fn digest(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(PRIME);
    }
    for &b in words.remainder() {
        h = (h ^ b as u64).wrapping_mul(PRIME);
    }
    h
}

/// One process alone: the group of a run that is not distributed, and a stand-in for tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl ProcessGroup for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>, BilevelError> {
        Ok(vec![local.to_vec()])
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cross_the_wire_at_their_exact_bits() {
        use crate::real::Real;
        let f: Vec<f32> = vec![1.5, -0.0, f32::MIN_POSITIVE / 2.0, f32::NAN, 3.25e-7];
        let mut bytes = Vec::new();
        f32::extend_le(&f, &mut bytes);
        assert_eq!(&bytes[..4], &1.5f32.to_le_bytes());
        let mut back = vec![0f32; f.len()];
        f32::fill_from_le(&bytes, &mut back);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&f), bits(&back));
        let d: Vec<f64> = vec![std::f64::consts::PI, -1e-300];
        let mut bytes = Vec::new();
        f64::extend_le(&d, &mut bytes);
        assert_eq!(f64::read_le(&bytes[8..]), -1e-300);
        let mut back = vec![0f64; 2];
        f64::fill_from_le(&bytes, &mut back);
        assert_eq!(back, d);
    }

    #[test]
    fn digests_tell_states_apart() {
        let a = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        let mut b = a;
        b[8] = 10;
        assert_ne!(digest(&a), digest(&b));
        assert_ne!(digest(&a[..8]), digest(&a));
        assert_eq!(digest(&a), digest(&a.clone()));
        assert!(check_agreement(&SingleProcess, "x", &a).is_ok());
    }
}
