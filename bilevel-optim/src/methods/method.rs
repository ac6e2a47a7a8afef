//! What a method declares about itself, once, in its own file: the [`Method`] trait, implemented
//! by the method's configuration type.

use std::fmt::Debug;

use dfdx::prelude::{Cpu, Device};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::BilevelError;
use crate::optimizer::BilevelOptimizer;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::schedule::PowerSchedule;

/// A bilevel method, described by its configuration: its name, which of its knobs are the step
/// sizes a grid search tunes and a rollback halves, how its knobs are checked, and how it is
/// built. Everything the library, `compare` and `tune` need goes through this trait, so a method
/// is its file plus one line of [`crate::methods::registry`] (or, for a method outside the
/// library, one call of [`crate::methods::registry::register`]).
///
/// The configuration is read from and written to TOML as `method = "<NAME>"` followed by its
/// fields, so it must (de)serialize as a struct; `#[serde(deny_unknown_fields, default)]`
/// gives users errors naming a misspelt key and lets them set only the knobs they change.
pub trait Method:
    Clone + Debug + PartialEq + Default + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The name users select the method by (`method = "soba"`, `--methods soba`).
    const NAME: &'static str;

    /// The step sizes to lower when a value stops being finite, named as in the configuration
    /// (`"eta for x, gamma for y"`): the end of that error's message.
    const HINT: &'static str;

    /// Checks every value, naming the first one out of range.
    fn validate(&self) -> Result<(), BilevelError>;

    /// The method's step sizes: the (lower, upper) pair a grid search tunes, and every step a
    /// rollback after a divergence halves.
    fn steps(&mut self) -> Steps<'_>;

    /// The (lower, upper) step sizes ([`Method::steps`]): the step of the SGD on y and the step
    /// (or initial step) of x.
    fn level_steps(&self) -> (f64, f64) {
        let mut copy = self.clone();
        let steps = copy.steps();
        (steps.lower.get(), steps.upper.get())
    }

    /// Sets the pair [`Method::level_steps`] reads (and the steps tied to the lower one);
    /// schedules keep their decay exponents.
    fn set_level_steps(&mut self, lower: f64, upper: f64) {
        let mut steps = self.steps();
        steps.lower.set(lower);
        steps.upper.set(upper);
        for step in &mut steps.with_lower {
            step.set(lower);
        }
    }

    /// Halves every step size (x, y and z steps; not momenta, penalties or series scales).
    fn halve_step_sizes(&mut self) {
        let mut steps = self.steps();
        steps.lower.halve();
        steps.upper.halve();
        for step in steps.with_lower.iter_mut().chain(&mut steps.others) {
            step.halve();
        }
    }

    /// The optimizer of this (valid) configuration, starting at `start`.
    fn optimizer<E: Real, P: BilevelProblem<E> + 'static>(
        &self,
        start: Start<'_, E, P>,
    ) -> Built<E, P>
    where
        Cpu: Device<E>;

    /// The optimizer, starting at `start`, after checking the configuration.
    fn build<E: Real, P: BilevelProblem<E> + 'static>(&self, start: Start<'_, E, P>) -> Built<E, P>
    where
        Cpu: Device<E>,
    {
        self.validate()?;
        self.optimizer(start)
    }
}

/// A method's step sizes, as [`Method::steps`] declares them.
pub struct Steps<'a> {
    /// The step of the SGD on y (the lower step of a grid search).
    pub lower: Step<'a>,
    /// The step, or initial step, of x (the upper step of a grid search).
    pub upper: Step<'a>,
    /// Steps set and halved with the lower one (F2SA's second lower copy).
    pub with_lower: Vec<Step<'a>>,
    /// Other steps a rollback halves (the step of z, ...).
    pub others: Vec<Step<'a>>,
}

impl<'a> Steps<'a> {
    /// The (lower, upper) pair.
    pub fn new(lower: impl Into<Step<'a>>, upper: impl Into<Step<'a>>) -> Self {
        Self {
            lower: lower.into(),
            upper: upper.into(),
            with_lower: Vec::new(),
            others: Vec::new(),
        }
    }

    /// With `step` set and halved with the lower step.
    pub fn with_lower(mut self, step: impl Into<Step<'a>>) -> Self {
        self.with_lower.push(step.into());
        self
    }

    /// With `step` halved on a rollback too.
    pub fn and(mut self, step: impl Into<Step<'a>>) -> Self {
        self.others.push(step.into());
        self
    }
}

/// One step size: a constant, or the initial step of a schedule (whose decay is kept).
pub enum Step<'a> {
    /// A constant step.
    Constant(&'a mut f64),
    /// A schedule `a/(t+1)^b`; its `a`.
    Schedule(&'a mut PowerSchedule),
}

impl Step<'_> {
    /// The step (a schedule's initial step).
    pub fn get(&self) -> f64 {
        match self {
            Step::Constant(v) => **v,
            Step::Schedule(s) => s.initial,
        }
    }

    /// Sets the step (a schedule's initial step).
    pub fn set(&mut self, value: f64) {
        match self {
            Step::Constant(v) => **v = value,
            Step::Schedule(s) => s.initial = value,
        }
    }

    /// Halves the step.
    pub fn halve(&mut self) {
        self.set(self.get() / 2.0);
    }
}

impl<'a> From<&'a mut f64> for Step<'a> {
    fn from(value: &'a mut f64) -> Self {
        Step::Constant(value)
    }
}

impl<'a> From<&'a mut PowerSchedule> for Step<'a> {
    fn from(schedule: &'a mut PowerSchedule) -> Self {
        Step::Schedule(schedule)
    }
}

/// What a method is built for: the problem and the starting x and y, of which most methods read
/// only the shapes (their memories start at zero).
pub struct Start<'a, E: Real, P: BilevelProblem<E>>
where
    Cpu: Device<E>,
{
    /// The initial upper variable.
    pub x: &'a P::X,
    /// The initial lower variable.
    pub y: &'a P::Y,
    /// The problem (SABA reads its split into fixed batches).
    pub problem: &'a P,
}

impl<'a, E: Real, P: BilevelProblem<E>> Start<'a, E, P>
where
    Cpu: Device<E>,
{
    /// The start at `x` and `y` on `problem`.
    pub fn at(x: &'a P::X, y: &'a P::Y, problem: &'a P) -> Self {
        Self { x, y, problem }
    }
}

impl<E: Real, P: BilevelProblem<E>> Clone for Start<'_, E, P>
where
    Cpu: Device<E>,
{
    fn clone(&self) -> Self {
        *self
    }
}

impl<E: Real, P: BilevelProblem<E>> Copy for Start<'_, E, P> where Cpu: Device<E> {}

/// A built optimizer, or why the configuration does not build.
pub type Built<E, P> = Result<Box<dyn BilevelOptimizer<E, P>>, BilevelError>;

/// Receives method types one by one ([`crate::methods::for_each_builtin`]): how code
/// that needs a method's type, not just its configuration value, reaches every method.
pub trait MethodVisitor {
    /// Called with one method's configuration type.
    fn visit<M: Method>(&mut self);
}
