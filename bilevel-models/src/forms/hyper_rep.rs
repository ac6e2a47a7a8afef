//! Hyper-representation (meta-learning): x = a shared encoder, y = one head per training task.

use std::marker::PhantomData;

use bilevel_optim::params::Params;
use bilevel_optim::problem::{Batch, BilevelProblem, SampleRng, Taped};
use bilevel_optim::real::Real;
use bilevel_optim::written_grad::WrittenGrad;
use dfdx::nn::modules::Repeated;
use dfdx::prelude::*;

use super::draw;
use crate::classifier::{add_loss_gradient, loss};
use crate::layer::WrittenLayer;
use crate::penalty::{add_l2_gradient, l2_penalty, FixedL2};
use crate::sequence::{Activations, Sequence};
use crate::tape::{hold, taped};
use crate::text::{EmbeddedTexts, TextBatch};

/// One few-shot task: indices of its support (lower level) and query (upper level) texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub support: Vec<usize>,
    pub query: Vec<usize>,
}

/// A batch of tasks: each task's index (which head) and its texts.
#[derive(Debug, Clone)]
pub struct TaskBatch<E: Real, const EMB: usize>
where
    Cpu: Device<E>,
{
    pub tasks: Vec<(usize, TextBatch<E, EMB>)>,
}

impl<E: Real, const EMB: usize> Batch for TaskBatch<E, EMB>
where
    Cpu: Device<E>,
{
    fn size(&self) -> usize {
        self.tasks.iter().map(|(_, b)| b.size()).sum()
    }
}

/// `g(x, y) = Σ_{i∈B} [CE(head_{y_i}(enc_x(support_i))) + (μ/2)‖y_i‖²]`,
/// `f(x, y) = Σ_{i∈B} CE(head_{y_i}(enc_x(query_i)))`, with `NT` heads (one per training task).
///
/// One outer iteration works on one batch of tasks: a lower batch draws `tasks_per_batch`
/// distinct tasks, and the next upper batch takes the query sets of those same tasks (the
/// meta-learning convention). Heads outside the batch get an exact zero gradient.
pub struct HyperRep<E, Enc, Head, const NT: usize, const EMB: usize, const C: usize> {
    texts: EmbeddedTexts,
    tasks: Vec<Task>,
    tasks_per_batch: usize,
    max_len: usize,
    mu: f64,
    /// The tasks of the latest lower batch, which the next upper batch reuses.
    current: Vec<usize>,
    _types: PhantomData<(E, Enc, Head)>,
}

impl<E: Real, Enc, Head, const NT: usize, const EMB: usize, const C: usize>
    HyperRep<E, Enc, Head, NT, EMB, C>
where
    Cpu: Device<E>,
{
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
            current: Vec::new(),
            _types: PhantomData,
        })
    }

    pub fn texts(&self) -> &EmbeddedTexts {
        &self.texts
    }

    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    fn task_batch(&self, which: impl Fn(&Task) -> &[usize]) -> TaskBatch<E, EMB> {
        TaskBatch {
            tasks: self
                .current
                .iter()
                .map(|&i| (i, self.texts.batch(which(&self.tasks[i]), self.max_len)))
                .collect(),
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

    fn sample_upper(&mut self, rng: &mut SampleRng) -> TaskBatch<E, EMB> {
        if self.current.is_empty() {
            self.current = draw(rng, NT, self.tasks_per_batch);
        }
        self.task_batch(|t| &t.query)
    }

    fn sample_lower(&mut self, rng: &mut SampleRng) -> TaskBatch<E, EMB> {
        self.current = draw(rng, NT, self.tasks_per_batch);
        self.task_batch(|t| &t.support)
    }

    /// The tasks of the latest lower batch.
    fn sampler_state(&self) -> Vec<u64> {
        self.current.iter().map(|&i| i as u64).collect()
    }

    fn restore_sampler(&mut self, state: &[u64]) -> Result<(), String> {
        if let Some(bad) = state.iter().find(|&&i| i as usize >= NT) {
            return Err(format!(
                "task {bad} in the sampler state, the problem has {NT} tasks"
            ));
        }
        self.current = state.iter().map(|&i| i as usize).collect();
        Ok(())
    }

    fn upper_loss(&self, x: &Enc, y: &Self::Y, batch: &TaskBatch<E, EMB>) -> Taped<Rank0, E> {
        sum_over_tasks(batch, |i, texts| {
            let features = x.forward(texts.sequence()).0;
            loss(&y.modules[i], features, &texts.targets(), None)
        })
    }

    fn lower_loss(&self, x: &Enc, y: &Self::Y, batch: &TaskBatch<E, EMB>) -> Taped<Rank0, E> {
        self.support_loss(x, y, batch, |features| features)
    }

    /// The encoder's features enter as constants (their tape is dropped): SGD on the heads
    /// needs no backward pass through the RNN.
    fn lower_loss_in_y(&self, x: &Enc, y: &Self::Y, batch: &TaskBatch<E, EMB>) -> Taped<Rank0, E> {
        self.support_loss(x, y, batch, |features| taped(&hold(&features)))
    }

    fn lower_grad_y(
        &self,
        x: &Enc,
        y: &Self::Y,
        batch: &TaskBatch<E, EMB>,
        grads: &mut WrittenGrad<E>,
    ) {
        let mut in_batch = vec![false; NT];
        for (i, texts) in &batch.tasks {
            in_batch[*i] = true;
            let features = x.forward(texts.sequence()).0;
            add_loss_gradient(&y.modules[*i], features, &texts.targets(), None, grads);
            add_l2_gradient(&FixedL2(self.mu), &y.modules[*i], grads);
        }
        for (head, _) in y.modules.iter().zip(&in_batch).filter(|(_, &seen)| !seen) {
            grads.zero(head);
        }
    }
}

impl<E: Real, Enc, Head, const NT: usize, const EMB: usize, const F: usize, const C: usize>
    HyperRep<E, Enc, Head, NT, EMB, C>
where
    Cpu: Device<E>,
    Enc: Params<E> + WrittenLayer<E, Sequence<E, EMB>, Output = Activations<E, F>>,
    Head: Params<E> + WrittenLayer<E, Activations<E, F>, Output = Activations<E, C>>,
{
    /// `g` on the support sets, with the encoder's features passed through `features` (the
    /// identity, or a cut of their tape) before the heads.
    fn support_loss(
        &self,
        x: &Enc,
        y: &Repeated<Head, NT>,
        batch: &TaskBatch<E, EMB>,
        features: impl Fn(Activations<E, F>) -> Activations<E, F>,
    ) -> Taped<Rank0, E> {
        sum_over_tasks(batch, |i, texts| {
            let f = features(x.forward(texts.sequence()).0);
            loss(&y.modules[i], f, &texts.targets(), None)
                + l2_penalty(&FixedL2(self.mu), &y.modules[i])
        })
    }
}

fn sum_over_tasks<E: Real, const EMB: usize>(
    batch: &TaskBatch<E, EMB>,
    mut term: impl FnMut(usize, &TextBatch<E, EMB>) -> Taped<Rank0, E>,
) -> Taped<Rank0, E>
where
    Cpu: Device<E>,
{
    batch
        .tasks
        .iter()
        .map(|(i, texts)| term(*i, texts))
        .reduce(|a, b| a + b)
        .expect("a task batch holds at least one task")
}
