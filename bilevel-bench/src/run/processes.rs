//! The processes one run is shared by (`mpirun -np N bilevel-bench run ...`): every process
//! computes its shards of every oracle pass ([`bilevel_optim::oracles::Oracles::distributed`]),
//! so all hold the same iterates; process 0 alone evaluates, logs and checkpoints, and every
//! evaluation checks that the processes still agree.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use bilevel_optim::distributed::{check_agreement, ProcessGroup, SingleProcess};

use crate::run::checkpoint::Checkpoint;

/// The processes sharing a run: one (the default), or an MPI world.
#[derive(Clone)]
pub struct Processes {
    group: Arc<dyn ProcessGroup>,
}

impl Default for Processes {
    fn default() -> Self {
        Self::single()
    }
}

impl Processes {
    /// This process alone.
    pub fn single() -> Self {
        Self {
            group: Arc::new(SingleProcess),
        }
    }

    /// The processes of `group` (its size may be 1).
    pub fn of(group: Arc<dyn ProcessGroup>) -> Self {
        Self { group }
    }

    /// The group, for [`bilevel_optim::oracles::Oracles::distributed`]; `None` for one process.
    pub fn group(&self) -> Option<Arc<dyn ProcessGroup>> {
        (self.group.size() > 1).then(|| self.group.clone())
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// The number of processes.
    pub fn size(&self) -> usize {
        self.group.size()
    }

    /// The bytes this process has received from the others so far.
    pub fn bytes_received(&self) -> u64 {
        self.group.bytes_received()
    }

    /// Whether this process writes the run's files (and evaluates, and shows progress): rank 0.
    pub fn writes(&self) -> bool {
        self.group.rank() == 0
    }

    /// The processes this program was started as: the MPI world under `mpirun` (with the `mpi`
    /// feature), else this process alone. A build without the feature refuses to run under an
    /// MPI launcher, where each copy would do the whole job and they would collide.
    pub fn launched() -> anyhow::Result<Self> {
        if !bilevel_optim::distributed::launched_by_mpi() {
            return Ok(Self::single());
        }
        #[cfg(feature = "mpi")]
        {
            let world = bilevel_optim::distributed::Mpi::init()?;
            Ok(Self::of(world))
        }
        #[cfg(not(feature = "mpi"))]
        anyhow::bail!(
            "started by an MPI launcher, but this build has no MPI support: build it with \
             `cargo build --release -p bilevel-bench --features mpi`"
        )
    }

    /// Ends every process with exit code `code` (MPI_Abort when shared): how a process that
    /// failed stops the others, which would wait forever for it.
    pub fn abort(&self, code: i32) -> ! {
        self.group.abort(code)
    }

    /// Fails, naming `what`, unless every process holds the same `state` bytes.
    pub fn check_agreement(&self, what: &str, state: &[u8]) -> anyhow::Result<()> {
        if self.group.size() > 1 {
            check_agreement(&*self.group, what, state)?;
        }
        Ok(())
    }

    /// What `produce` returns in process 0, in every process: process 0 reads a file, say, and
    /// the others never touch the run directory, which then need not be on a file system they
    /// share. Process 0's error, too, reaches every process, so that all fail together.
    pub fn from_first(
        &self,
        produce: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<Vec<u8>> {
        if self.group.size() == 1 {
            return produce();
        }
        let mine = if self.writes() {
            match produce() {
                Ok(bytes) => [&[1u8][..], &bytes].concat(),
                Err(e) => [&[0u8][..], format!("{e:#}").as_bytes()].concat(),
            }
        } else {
            Vec::new()
        };
        let mut all = self
            .group
            .all_gather(&mine)
            .context("sending process 0's data to every process")?;
        let from_0 = std::mem::take(&mut all[0]);
        match from_0.split_first() {
            Some((1, bytes)) => Ok(bytes.to_vec()),
            Some((_, text)) => anyhow::bail!("{}", String::from_utf8_lossy(text)),
            None => anyhow::bail!("process 0 sent nothing"),
        }
    }

    /// The checkpoint of `dir` as process 0 reads it ([`Checkpoint::read`], which may set a
    /// damaged file aside), in every process.
    pub fn read_checkpoint(&self, dir: &Path) -> anyhow::Result<Checkpoint> {
        if self.group.size() == 1 {
            return Checkpoint::read(dir);
        }
        let bytes = self.from_first(|| Checkpoint::read(dir)?.to_bytes())?;
        Checkpoint::from_bytes(&bytes, &dir.join(crate::run::checkpoint::FILE))
    }
}
