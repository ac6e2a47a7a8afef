//! Hyper-representation (meta-learning): x = a shared encoder, y = one head per training task.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Mutex;

use bilevel_optim::params::Params;
use bilevel_optim::problem::{
    fixed_batch, fixed_batch_count, Batch, BilevelProblem, SampleRng, ShardedProblem, Taped,
};
use bilevel_optim::real::Real;
use bilevel_optim::shards::shard_range;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::Repeated;
use dfdx::prelude::*;

use super::draw;
use crate::classifier::{add_loss_gradient, loss};
use crate::layer::WrittenLayer;
use crate::loss::one_hot;
use crate::penalty::{add_l2_gradient, l2_penalty, FixedL2};
use crate::rows::gather_rows;
use crate::sequence::{Activations, Sequence};
use crate::tape::{hold, taped, Held};
use crate::text::{EmbeddedTexts, TextBatch};

/// One few-shot task: indices of its support (lower level) and query (upper level) texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The texts the task's head is trained on (the lower level).
    pub support: Vec<usize>,
    /// The texts the adapted head is scored on (the upper level).
    pub query: Vec<usize>,
}

/// A batch of tasks: all their texts in one packed batch, task after task, so that one encoder
/// pass of `tasks · texts` rows serves every task (per-task passes of 20 rows ran the matrix
/// products far below the kernels' speed), and each task's head index and rows.
#[derive(Debug, Clone)]
pub struct TaskBatch<E: Real, const EMB: usize>
where
    Cpu: Device<E>,
{
    /// Every text of the batch's tasks, embedded and packed.
    pub texts: TextBatch<E, EMB>,
    /// Each task of the batch: its index (which head) and its rows in `texts`.
    pub tasks: Vec<(usize, Range<usize>)>,
}

impl<E: Real, const EMB: usize> Batch for TaskBatch<E, EMB>
where
    Cpu: Device<E>,
{
    fn size(&self) -> usize {
        self.texts.size()
    }
}

/// How a [`HyperRep`] draws its task batches (`per-iteration` or `per-lower-draw` in a config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskDraws {
    /// One batch of tasks per iteration, drawn when the iteration begins
    /// ([`BilevelProblem::begin_iteration`]): every lower batch of the iteration is their
    /// support sets and every upper batch their query sets. The meta-learning convention, which
    /// the BO-REP code's hyper-representation loop and the PyTorch/JAX peer follow.
    #[default]
    PerIteration,
    /// Every lower batch draws new tasks, and the next upper batch takes the query sets of the
    /// latest lower batch's tasks (the only behaviour before 2026-12-07).
    PerLowerDraw,
}

/// Marks a sampler state saved under [`TaskDraws::PerIteration`] (no task has this index), so a
/// checkpoint is never resumed under the other convention without a word.
const PER_ITERATION_MARK: u64 = u64::MAX;

/// `g(x, y) = Σ_{i∈B} [CE(head_{y_i}(enc_x(support_i))) + (μ/2)‖y_i‖²]`,
/// `f(x, y) = Σ_{i∈B} CE(head_{y_i}(enc_x(query_i)))`, with `NT` heads (one per training task).
///
/// An outer iteration works on one batch B of `tasks_per_batch` distinct tasks: its lower
/// batches are B's support sets and its upper batches B's query sets ([`TaskDraws`] says when
/// B is drawn). Heads outside the batch get an exact zero gradient.
pub struct HyperRep<E, Enc, Head, const NT: usize, const EMB: usize, const C: usize> {
    texts: EmbeddedTexts,
    tasks: Vec<Task>,
    tasks_per_batch: usize,
    max_len: usize,
    mu: f64,
    draws: TaskDraws,
    /// The current task batch B: the iteration's, or the latest lower batch's.
    current: Vec<usize>,
    features: Mutex<FeatureCache<E>>,
    _types: PhantomData<(E, Enc, Head)>,
}

/// The encoder's features of recent lower batches at one x. SGD steps on the heads leave x
/// fixed, so the N steps of a periodic update on one task batch need one encoder pass, not N
/// (the PyTorch/JAX peer does the same). Entries are exact copies, so a hit gives the bits a pass
/// would; any change of x, to the last bit, empties the cache.
struct FeatureCache<E> {
    /// The x the entries were computed at.
    x: Vec<E>,
    /// (the batch's text ids, its features row-major).
    entries: Vec<(Vec<usize>, Vec<E>)>,
}

/// Enough for every shard of a batch and the batches of one iteration.
const FEATURE_CACHE_ENTRIES: usize = 64;

impl<E: Real, Enc, Head, const NT: usize, const EMB: usize, const C: usize>
    HyperRep<E, Enc, Head, NT, EMB, C>
where
    Cpu: Device<E>,
{
    /// The form over `texts` and the training `tasks`, drawing `tasks_per_batch` tasks per batch; fails when a task refers to a text that does not exist.
    pub fn new(
        texts: EmbeddedTexts,
        tasks: Vec<Task>,
        tasks_per_batch: usize,
        max_len: usize,
        mu: f64,
    ) -> Result<Self, String> {
        if tasks.len() != NT {
            return Err(format!("{} tasks for {NT} heads", tasks.len()));
        }
        if texts.dim() != EMB {
            return Err(format!(
                "texts have {}-d vectors, the model reads {EMB}-d",
                texts.dim()
            ));
        }
        if tasks_per_batch == 0 {
            return Err("tasks_per_batch must be at least 1".into());
        }
        for (i, task) in tasks.iter().enumerate() {
            if task.support.is_empty() || task.query.is_empty() {
                return Err(format!("task {i} has an empty support or query set"));
            }
            if let Some(&bad) = task
                .support
                .iter()
                .chain(&task.query)
                .find(|&&t| t >= texts.len())
            {
                return Err(format!(
                    "task {i} refers to text {bad}, beyond the {} texts",
                    texts.len()
                ));
            }
        }
        Ok(Self {
            texts,
            tasks,
            tasks_per_batch,
            max_len,
            mu,
            draws: TaskDraws::default(),
            current: Vec::new(),
            features: Mutex::new(FeatureCache {
                x: Vec::new(),
                entries: Vec::new(),
            }),
            _types: PhantomData,
        })
    }

    /// The same form drawing its task batches as `draws` says.
    pub fn with_task_draws(mut self, draws: TaskDraws) -> Self {
        self.draws = draws;
        self
    }

    /// How the form draws its task batches.
    pub fn task_draws(&self) -> TaskDraws {
        self.draws
    }

    /// Every text the tasks refer to.
    pub fn texts(&self) -> &EmbeddedTexts {
        &self.texts
    }

    /// The training tasks, one head of y each.
    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    fn task_batch(&self, which: impl Fn(&Task) -> &[usize]) -> TaskBatch<E, EMB> {
        self.batch_of(self.current.iter().map(|&i| (i, which(&self.tasks[i]))))
    }

    /// Fixed part `k` of the tasks (support or query sets, as `which` picks). Under
    /// [`TaskDraws::PerLowerDraw`] it becomes the current batch; the iteration's batch is kept
    /// otherwise.
    fn fixed_part(
        &mut self,
        k: usize,
        which: impl Fn(&Task) -> &[usize],
    ) -> Option<TaskBatch<E, EMB>> {
        let part: Vec<usize> = fixed_batch(NT, self.tasks_per_batch, k)?.collect();
        let batch = self.batch_of(part.iter().map(|&i| (i, which(&self.tasks[i]))));
        if self.draws == TaskDraws::PerLowerDraw {
            self.current = part;
        }
        Some(batch)
    }

    /// One packed batch of the given tasks' texts (head index, text ids), task after task, built
    /// on this thread's device.
    fn batch_of<'a>(&self, tasks: impl Iterator<Item = (usize, &'a [usize])>) -> TaskBatch<E, EMB> {
        let mut ids = Vec::new();
        let mut rows = Vec::new();
        for (head, texts) in tasks {
            let start = ids.len();
            ids.extend_from_slice(texts);
            rows.push((head, start..ids.len()));
        }
        TaskBatch {
            texts: self.texts.batch(&ids, self.max_len),
            tasks: rows,
        }
    }
}

impl<E: Real, Enc, Head, const NT: usize, const EMB: usize, const F: usize, const C: usize>
    BilevelProblem<E> for HyperRep<E, Enc, Head, NT, EMB, C>
where
    Cpu: Device<E>,
    Enc: Params<E> + WrittenLayer<E, Sequence<E, EMB>, Output = Activations<E, F>>,
    Head: Params<E> + WrittenLayer<E, Activations<E, F>, Output = Activations<E, C>>,
{
    type X = Enc;
    type Y = Repeated<Head, NT>;
    type UpperBatch = TaskBatch<E, EMB>;
    type LowerBatch = TaskBatch<E, EMB>;

    fn begin_iteration(&mut self, rng: &mut SampleRng) {
        if self.draws == TaskDraws::PerIteration {
            self.current = draw(rng, NT, self.tasks_per_batch);
        }
    }

    fn sample_upper(&mut self, rng: &mut SampleRng) -> TaskBatch<E, EMB> {
        if self.current.is_empty() {
            self.current = draw(rng, NT, self.tasks_per_batch);
        }
        self.task_batch(|t| &t.query)
    }

    fn sample_lower(&mut self, rng: &mut SampleRng) -> TaskBatch<E, EMB> {
        if self.draws == TaskDraws::PerLowerDraw || self.current.is_empty() {
            self.current = draw(rng, NT, self.tasks_per_batch);
        }
        self.task_batch(|t| &t.support)
    }

    /// Fixed batches of consecutive tasks, for methods with one memory per batch (SABA).
    fn lower_parts(&self) -> Option<usize> {
        Some(fixed_batch_count(NT, self.tasks_per_batch))
    }

    /// Under [`TaskDraws::PerLowerDraw`], the next upper batch takes this part's queries.
    fn lower_part(&mut self, k: usize) -> Option<TaskBatch<E, EMB>> {
        self.fixed_part(k, |t| &t.support)
    }

    /// The query sets of the same fixed task batches.
    fn upper_parts(&self) -> Option<usize> {
        self.lower_parts()
    }

    fn upper_part(&mut self, k: usize) -> Option<TaskBatch<E, EMB>> {
        self.fixed_part(k, |t| &t.query)
    }

    /// The current task batch, marked with the convention it was drawn under.
    fn sampler_state(&self) -> Vec<u64> {
        let mark = (self.draws == TaskDraws::PerIteration).then_some(PER_ITERATION_MARK);
        mark.into_iter()
            .chain(self.current.iter().map(|&i| i as u64))
            .collect()
    }

    fn restore_sampler(&mut self, state: &[u64]) -> Result<(), String> {
        let state = match (self.draws, state.first()) {
            (TaskDraws::PerIteration, Some(&PER_ITERATION_MARK)) => &state[1..],
            (TaskDraws::PerLowerDraw, Some(&PER_ITERATION_MARK)) => {
                return Err(
                    "the checkpoint drew one task batch per iteration, this run draws \
                            tasks at every lower batch (task_draws)"
                        .into(),
                )
            }
            (TaskDraws::PerIteration, Some(_)) => {
                return Err(
                    "the checkpoint drew tasks at every lower batch, this run draws one \
                            task batch per iteration (task_draws)"
                        .into(),
                )
            }
            _ => state,
        };
        if let Some(bad) = state.iter().find(|&&i| i as usize >= NT) {
            return Err(format!(
                "task {bad} in the sampler state, the problem has {NT} tasks"
            ));
        }
        self.current = state.iter().map(|&i| i as usize).collect();
        Ok(())
    }

    fn upper_loss(&self, x: &Enc, y: &Self::Y, batch: &TaskBatch<E, EMB>) -> Taped<Rank0, E> {
        task_features(x, batch, |features| features)
            .into_iter()
            .map(|(i, features, targets)| loss(&y.modules[i], features, &targets, None))
            .reduce(|a, b| a + b)
            .expect("a task batch holds at least one task")
    }

    fn lower_loss(&self, x: &Enc, y: &Self::Y, batch: &TaskBatch<E, EMB>) -> Taped<Rank0, E> {
        self.support_loss(x, y, batch)
    }

    /// The encoder's features enter as constants (their tape is dropped): SGD on the heads
    /// needs no backward pass through the RNN, and repeated steps at one x reuse them.
    fn lower_loss_in_y(&self, x: &Enc, y: &Self::Y, batch: &TaskBatch<E, EMB>) -> Taped<Rank0, E> {
        let features = self.constant_features(x, batch);
        heads_loss(self.mu, y, task_pieces(taped(&features), batch))
    }

    fn write_lower_grad_y(
        &self,
        x: &Enc,
        y: &Self::Y,
        batch: &TaskBatch<E, EMB>,
        grads: &mut WrittenGrad<E>,
    ) {
        let mut in_batch = vec![false; NT];
        for (i, features, targets) in task_features(x, batch, |features| features) {
            in_batch[i] = true;
            add_loss_gradient(&y.modules[i], features, &targets, None, grads);
            add_l2_gradient(&FixedL2(self.mu), &y.modules[i], grads);
        }
        for (head, _) in y.modules.iter().zip(&in_batch).filter(|(_, &seen)| !seen) {
            grads.zero(head);
        }
    }

    /// The batch's heads: the passes then cost what 20 heads cost, not 400.
    fn upper_touches(&self, y: &Self::Y, batch: &TaskBatch<E, EMB>) -> Option<Vec<bool>> {
        Some(heads_touched(y, batch))
    }

    fn lower_touches(&self, y: &Self::Y, batch: &TaskBatch<E, EMB>) -> Option<Vec<bool>> {
        Some(heads_touched(y, batch))
    }
}

/// Marks the tensors of the batch's heads among y's trainable tensors (in visiting order: head
/// after head).
fn heads_touched<E: Real, Head: Params<E>, const EMB: usize, const NT: usize>(
    y: &Repeated<Head, NT>,
    batch: &TaskBatch<E, EMB>,
) -> Vec<bool>
where
    Cpu: Device<E>,
{
    let per_head = y.modules.first().map_or(0, Params::tensor_count);
    let mut touched = vec![false; NT * per_head];
    for (i, _) in &batch.tasks {
        touched[i * per_head..(i + 1) * per_head].fill(true);
    }
    touched
}

/// Both losses are sums over tasks, each task with its own head (and that head's penalty), so a
/// shard is a share of the tasks with weight 1.
impl<E: Real, Enc, Head, const NT: usize, const EMB: usize, const F: usize, const C: usize>
    ShardedProblem<E> for HyperRep<E, Enc, Head, NT, EMB, C>
where
    Cpu: Device<E>,
    Enc: Params<E> + WrittenLayer<E, Sequence<E, EMB>, Output = Activations<E, F>>,
    Head: Params<E> + WrittenLayer<E, Activations<E, F>, Output = Activations<E, C>>,
{
    fn upper_shard(
        &self,
        batch: &TaskBatch<E, EMB>,
        k: usize,
        parts: usize,
    ) -> Option<(f64, TaskBatch<E, EMB>)> {
        self.task_shard(batch, k, parts)
    }

    fn lower_shard(
        &self,
        batch: &TaskBatch<E, EMB>,
        k: usize,
        parts: usize,
    ) -> Option<(f64, TaskBatch<E, EMB>)> {
        self.task_shard(batch, k, parts)
    }
}

impl<E: Real, Enc, Head, const NT: usize, const EMB: usize, const F: usize, const C: usize>
    HyperRep<E, Enc, Head, NT, EMB, C>
where
    Cpu: Device<E>,
    Enc: Params<E> + WrittenLayer<E, Sequence<E, EMB>, Output = Activations<E, F>>,
    Head: Params<E> + WrittenLayer<E, Activations<E, F>, Output = Activations<E, C>>,
{
    /// The tasks of shard `k` of `parts` (a contiguous share), rebuilt on this thread's device.
    fn task_shard(
        &self,
        batch: &TaskBatch<E, EMB>,
        k: usize,
        parts: usize,
    ) -> Option<(f64, TaskBatch<E, EMB>)> {
        let mine = &batch.tasks[shard_range(batch.tasks.len(), k, parts)];
        if mine.is_empty() {
            return None;
        }
        let tasks = mine
            .iter()
            .map(|(head, rows)| (*head, &batch.texts.ids[rows.clone()]));
        Some((1.0, self.batch_of(tasks)))
    }

    /// `g` on the support sets, through the encoder's pass.
    fn support_loss(
        &self,
        x: &Enc,
        y: &Repeated<Head, NT>,
        batch: &TaskBatch<E, EMB>,
    ) -> Taped<Rank0, E> {
        heads_loss(self.mu, y, task_features(x, batch, |features| features))
    }

    /// The encoder's features of `batch` at `x` without a tape, from the cache when the same
    /// texts were encoded at the same x.
    fn constant_features(&self, x: &Enc, batch: &TaskBatch<E, EMB>) -> Held<(usize, Const<F>), E> {
        let ids = &batch.texts.ids;
        let x_now = x.to_flat();
        {
            let mut cache = self.features.lock().unwrap_or_else(|e| e.into_inner());
            if !same_bits(&cache.x, &x_now) {
                cache.x = x_now;
                cache.entries.clear();
            } else if let Some((_, data)) = cache.entries.iter().find(|(k, _)| k == ids) {
                return bilevel_optim::real::device()
                    .tensor_from_vec(data.clone(), (ids.len(), Const::<F>));
            }
        }
        let held = hold(&x.forward(batch.texts.sequence()).0);
        let mut cache = self.features.lock().unwrap_or_else(|e| e.into_inner());
        if cache.entries.len() == FEATURE_CACHE_ENTRIES {
            cache.entries.remove(0);
        }
        cache.entries.push((ids.clone(), held.as_vec()));
        held
    }
}

/// Whether `a` and `b` hold the same numbers to the bit (so ±0 differ and NaN never matches).
fn same_bits<E: Real>(a: &[E], b: &[E]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(p, q)| p == q && p.is_sign_negative() == q.is_sign_negative())
}

/// `g` on the support sets from each task's features: its head's loss plus the head's penalty.
fn heads_loss<E: Real, Head, const F: usize, const C: usize, const NT: usize>(
    mu: f64,
    y: &Repeated<Head, NT>,
    pieces: Vec<TaskPiece<E, F, C>>,
) -> Taped<Rank0, E>
where
    Cpu: Device<E>,
    Head: Params<E> + WrittenLayer<E, Activations<E, F>, Output = Activations<E, C>>,
{
    pieces
        .into_iter()
        .map(|(i, f, targets)| {
            loss(&y.modules[i], f, &targets, None) + l2_penalty(&FixedL2(mu), &y.modules[i])
        })
        .reduce(|a, b| a + b)
        .expect("a task batch holds at least one task")
}

/// A task's head index, its texts' encoder features and their one-hot targets.
type TaskPiece<E, const F: usize, const C: usize> =
    (usize, Activations<E, F>, Tensor<(usize, Const<C>), E, Cpu>);

/// Each task's head index, encoder features and one-hot targets, from one encoder pass over the
/// whole batch whose output goes through `features` (the identity, or a cut of its tape). The
/// first task's rows carry the pass's tape; the others read the same values through tape-free
/// handles, and the gradients they send back meet at the pass's output.
fn task_features<E: Real, Enc, const EMB: usize, const F: usize, const C: usize>(
    x: &Enc,
    batch: &TaskBatch<E, EMB>,
    features: impl Fn(Activations<E, F>) -> Activations<E, F>,
) -> Vec<TaskPiece<E, F, C>>
where
    Cpu: Device<E>,
    Enc: WrittenLayer<E, Sequence<E, EMB>, Output = Activations<E, F>>,
{
    task_pieces(features(x.forward(batch.texts.sequence()).0), batch)
}

/// Each task's head index, rows of `all` (the batch's features) and one-hot targets.
fn task_pieces<E: Real, const EMB: usize, const F: usize, const C: usize>(
    all: Activations<E, F>,
    batch: &TaskBatch<E, EMB>,
) -> Vec<TaskPiece<E, F, C>>
where
    Cpu: Device<E>,
{
    let held = hold(&all);
    let mut carrier = Some(all);
    batch
        .tasks
        .iter()
        .map(|(i, rows)| {
            let source = carrier.take().unwrap_or_else(|| taped(&held));
            let mine = gather_rows(source, &rows.clone().collect::<Vec<_>>());
            let targets = one_hot::<E, C>(&batch.texts.labels[rows.clone()]);
            (*i, mine, targets)
        })
        .collect()
}
