//! [`ProcessGroup`] over MPI (the `mpi` feature): Open MPI or any other implementation the `mpi`
//! crate (rsmpi) builds against.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;

use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};
use mpi::Count;

use super::ProcessGroup;
use crate::error::BilevelError;

/// The processes `mpirun` started (MPI's world), initialized once per process by [`Mpi::init`].
/// MPI is finalized when the last handle is dropped.
///
/// Only the thread that called [`Mpi::init`] talks to MPI (MPI's "funneled" level, which every
/// implementation supports); a collective called from another thread fails with an error
/// instead of corrupting MPI's state. The oracles call it from the caller's thread, never from
/// their shard threads.
pub struct Mpi {
    world: SimpleCommunicator,
    /// What [`ProcessGroup::bytes_received`] reports.
    received: AtomicU64,
    thread: ThreadId,
    /// Dropped last: finalizes MPI.
    _universe: Universe,
}

// SAFETY: MPI handles are plain integers or pointers into the MPI library, which may be moved
// between threads; every call through them is refused unless it comes from the thread that
// initialized MPI (`Mpi::on_mpi_thread`), which is what the funneled level requires.
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

impl Mpi {
    /// Initializes MPI in this process (once: a second call fails) and returns its world.
    pub fn init() -> Result<Arc<Self>, BilevelError> {
        let (universe, _level) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| {
                BilevelError::Distributed(
                    "MPI is already initialized in this process (call Mpi::init once and share \
                     its handle)"
                        .into(),
                )
            })?;
        Ok(Arc::new(Self {
            world: universe.world(),
            received: AtomicU64::new(0),
            thread: std::thread::current().id(),
            _universe: universe,
        }))
    }

    /// Whether this process was started by an MPI launcher: then it should call [`Mpi::init`]
    /// ([`super::launched_by_mpi`]).
    pub fn launched() -> bool {
        super::launched_by_mpi()
    }

    /// Waits until every process has reached this call.
    pub fn barrier(&self) -> Result<(), BilevelError> {
        self.on_mpi_thread()?;
        self.world.barrier();
        Ok(())
    }

    fn on_mpi_thread(&self) -> Result<(), BilevelError> {
        if std::thread::current().id() == self.thread {
            Ok(())
        } else {
            Err(BilevelError::Distributed(
                "MPI was called from a thread other than the one that initialized it".into(),
            ))
        }
    }
}

impl ProcessGroup for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    /// Two collectives: the lengths (`MPI_Allgather`), then the bytes (`MPI_Allgatherv`).
    fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>, BilevelError> {
        self.on_mpi_thread()?;
        let too_long = || {
            BilevelError::Distributed(format!(
                "a message of {} bytes exceeds what one MPI call can carry (2 GiB in all)",
                local.len()
            ))
        };
        let length = Count::try_from(local.len()).map_err(|_| too_long())?;
        let mut lengths = vec![0 as Count; self.size()];
        self.world.all_gather_into(&length, &mut lengths[..]);
        let mut offsets = Vec::with_capacity(lengths.len());
        let mut total: Count = 0;
        for &n in &lengths {
            offsets.push(total);
            total = total.checked_add(n).ok_or_else(too_long)?;
        }
        self.received
            .fetch_add(total as u64 - local.len() as u64, Ordering::Relaxed);
        let mut all = vec![0u8; total as usize];
        {
            let mut partition = PartitionMut::new(&mut all[..], &lengths[..], &offsets[..]);
            self.world.all_gather_varcount_into(local, &mut partition);
        }
        Ok(lengths
            .iter()
            .zip(&offsets)
            .map(|(&n, &at)| all[at as usize..(at + n) as usize].to_vec())
            .collect())
    }

    fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// `MPI_Abort` on the world: the launcher ends every process.
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
