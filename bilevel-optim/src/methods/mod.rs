//! Every method of the library behind one trait, selectable by name.
//!
//! Each method lives in its own module and reads like its pseudocode; the shared pieces are in
//! [`crate::steps`] (SGD on y, the linear-system step, momentum, normalization, checked oracles),
//! [`crate::neumann`] (Neumann series) and [`crate::variance`] (STORM, SPIDER, SAGA).
//! [`MethodConfig`] is the serde-tagged union of their configurations (`method = "soba"`, ...),
//! from which [`MethodConfig::build`] makes the optimizer.

pub mod accbo;
pub mod adambo;
pub mod alset;
pub mod amigo;
pub mod anil;
pub mod bsa;
pub mod f2sa;
pub mod ma_soba;
pub mod maml;
pub mod meta;
pub mod mrbo;
pub mod neumann_family;
pub mod saba;
pub mod slip;
pub mod soba;
pub mod stocbio;
pub mod ttsa;
pub mod vrbo;

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use crate::borep::{BoRep, BoRepConfig};
use crate::error::BilevelError;
use crate::optimizer::BilevelOptimizer;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::schedule::PowerSchedule;
use accbo::{AccBo, AccBoConfig};
use adambo::{AdamBo, AdamBoConfig};
use alset::{Alset, AlsetConfig};
use amigo::{Amigo, AmigoConfig};
use anil::Anil;
use bsa::{Bsa, BsaConfig};
use f2sa::{F2sa, F2saConfig};
use ma_soba::{MaSoba, MaSobaConfig};
use maml::Maml;
use meta::MetaConfig;
use mrbo::{Mrbo, MrboConfig};
use neumann_family::NeumannRule;
use saba::{Saba, SabaConfig};
use slip::{Slip, SlipConfig};
use soba::{Soba, SobaConfig};
use stocbio::{StocBio, StocBioConfig};
use ttsa::{Ttsa, TtsaConfig};
use vrbo::{Vrbo, VrboConfig};

/// The names users select methods by, in the order of the documentation.
pub const METHODS: [&str; 17] = [
    "bo-rep", "stocbio", "ttsa", "bsa", "alset", "amigo", "soba", "saba", "ma-soba", "f2sa",
    "mrbo", "vrbo", "slip", "accbo", "adambo", "maml", "anil",
];

/// A method and its configuration; in TOML, `method = "soba"` followed by the method's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum MethodConfig {
    /// `bo-rep`: [`crate::borep`].
    BoRep(BoRepConfig),
    /// `stocbio`: [`stocbio`].
    Stocbio(StocBioConfig),
    /// `ttsa`: [`ttsa`].
    Ttsa(TtsaConfig),
    /// `bsa`: [`bsa`].
    Bsa(BsaConfig),
    /// `alset`: [`alset`].
    Alset(AlsetConfig),
    /// `amigo`: [`amigo`].
    Amigo(AmigoConfig),
    /// `soba`: [`soba`].
    Soba(SobaConfig),
    /// `saba`: [`saba`].
    Saba(SabaConfig),
    /// `ma-soba`: [`ma_soba`].
    MaSoba(MaSobaConfig),
    /// `f2sa`: [`f2sa`].
    F2sa(F2saConfig),
    /// `mrbo`: [`mrbo`].
    Mrbo(MrboConfig),
    /// `vrbo`: [`vrbo`].
    Vrbo(VrboConfig),
    /// `slip`: [`slip`].
    Slip(SlipConfig),
    /// `accbo`: [`accbo`].
    Accbo(AccBoConfig),
    /// `adambo`: [`adambo`].
    Adambo(AdamBoConfig),
    /// `maml`: [`maml`].
    Maml(MetaConfig),
    /// `anil`: [`anil`].
    Anil(MetaConfig),
}

impl MethodConfig {
    /// The default configuration of the method called `name`.
    pub fn default_for(name: &str) -> Result<Self, BilevelError> {
        Ok(match name {
            "bo-rep" => Self::BoRep(Default::default()),
            "stocbio" => Self::Stocbio(Default::default()),
            "ttsa" => Self::Ttsa(Default::default()),
            "bsa" => Self::Bsa(Default::default()),
            "alset" => Self::Alset(Default::default()),
            "amigo" => Self::Amigo(Default::default()),
            "soba" => Self::Soba(Default::default()),
            "saba" => Self::Saba(Default::default()),
            "ma-soba" => Self::MaSoba(Default::default()),
            "f2sa" => Self::F2sa(Default::default()),
            "mrbo" => Self::Mrbo(Default::default()),
            "vrbo" => Self::Vrbo(Default::default()),
            "slip" => Self::Slip(Default::default()),
            "accbo" => Self::Accbo(Default::default()),
            "adambo" => Self::Adambo(Default::default()),
            "maml" => Self::Maml(Default::default()),
            "anil" => Self::Anil(Default::default()),
            other => {
                return Err(BilevelError::InvalidConfig {
                    field: "method",
                    reason: format!(
                        "'{other}' is not a method; choose one of {}",
                        METHODS.join(", ")
                    ),
                })
            }
        })
    }

    /// The method's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::BoRep(_) => "bo-rep",
            Self::Stocbio(_) => "stocbio",
            Self::Ttsa(_) => "ttsa",
            Self::Bsa(_) => "bsa",
            Self::Alset(_) => "alset",
            Self::Amigo(_) => "amigo",
            Self::Soba(_) => "soba",
            Self::Saba(_) => "saba",
            Self::MaSoba(_) => "ma-soba",
            Self::F2sa(_) => "f2sa",
            Self::Mrbo(_) => "mrbo",
            Self::Vrbo(_) => "vrbo",
            Self::Slip(_) => "slip",
            Self::Accbo(_) => "accbo",
            Self::Adambo(_) => "adambo",
            Self::Maml(_) => "maml",
            Self::Anil(_) => "anil",
        }
    }

    /// Halves every step size of the method (x, y and z steps; not momenta, penalties or
    /// series scales), as a run does when it rolls back after a divergence.
    pub fn halve_step_sizes(&mut self) {
        fn half(s: &mut PowerSchedule) {
            s.initial /= 2.0;
        }
        match self {
            Self::BoRep(c) => {
                c.eta /= 2.0;
                c.gamma /= 2.0;
                c.nu /= 2.0;
            }
            Self::Stocbio(c) => {
                half(&mut c.eta);
                c.gamma /= 2.0;
            }
            Self::Ttsa(c) => {
                half(&mut c.alpha);
                half(&mut c.beta);
            }
            Self::Bsa(c) => {
                half(&mut c.eta);
                c.gamma /= 2.0;
            }
            Self::Alset(c) => {
                half(&mut c.alpha);
                c.beta /= 2.0;
            }
            Self::Amigo(c) => {
                half(&mut c.alpha);
                c.gamma /= 2.0;
                c.rho /= 2.0;
            }
            Self::Soba(c) => {
                half(&mut c.rho);
                half(&mut c.gamma);
            }
            Self::Saba(c) => {
                c.rho /= 2.0;
                c.gamma /= 2.0;
            }
            Self::MaSoba(c) => {
                half(&mut c.alpha);
                half(&mut c.beta);
                half(&mut c.gamma);
            }
            Self::F2sa(c) => {
                half(&mut c.eta);
                c.gamma_y /= 2.0;
                c.gamma_z /= 2.0;
            }
            // Not `step_scale`: η_k also sets the momentum weights c·η_k².
            Self::Mrbo(c) => {
                c.x_scale /= 2.0;
                c.y_scale /= 2.0;
            }
            Self::Vrbo(c) => {
                c.alpha /= 2.0;
                c.beta /= 2.0;
            }
            Self::Slip(c) => {
                half(&mut c.eta);
                c.gamma /= 2.0;
                c.nu /= 2.0;
            }
            Self::Accbo(c) => {
                half(&mut c.eta);
                c.gamma /= 2.0;
            }
            Self::Adambo(c) => {
                half(&mut c.eta);
                c.gamma /= 2.0;
            }
            Self::Maml(c) | Self::Anil(c) => {
                half(&mut c.outer_step);
                c.inner_step /= 2.0;
            }
        }
    }

    /// The method's (lower, upper) step sizes, the pair a grid search tunes: the step of the
    /// SGD on y and the step (or initial step) of x. For methods whose z moves with y's step
    /// (SOBA, SABA) or that run SGD on two lower copies (F2SA's y and z), the lower step is that
    /// shared step; other z steps, momenta and series scales are not part of the pair. MRBO's
    /// steps are its y and x scales of the common η_k.
    pub fn level_steps(&self) -> (f64, f64) {
        match self {
            Self::BoRep(c) => (c.gamma, c.eta),
            Self::Stocbio(c) => (c.gamma, c.eta.initial),
            Self::Ttsa(c) => (c.beta.initial, c.alpha.initial),
            Self::Bsa(c) => (c.gamma, c.eta.initial),
            Self::Alset(c) => (c.beta, c.alpha.initial),
            Self::Amigo(c) => (c.gamma, c.alpha.initial),
            Self::Soba(c) => (c.rho.initial, c.gamma.initial),
            Self::Saba(c) => (c.rho, c.gamma),
            Self::MaSoba(c) => (c.beta.initial, c.alpha.initial),
            Self::F2sa(c) => (c.gamma_y, c.eta.initial),
            Self::Mrbo(c) => (c.y_scale, c.x_scale),
            Self::Vrbo(c) => (c.beta, c.alpha),
            Self::Slip(c) => (c.gamma, c.eta.initial),
            Self::Accbo(c) => (c.gamma, c.eta.initial),
            Self::Adambo(c) => (c.gamma, c.eta.initial),
            Self::Maml(c) | Self::Anil(c) => (c.inner_step, c.outer_step.initial),
        }
    }

    /// Sets the pair [`Self::level_steps`] reads; schedules keep their decay exponents.
    pub fn set_level_steps(&mut self, lower: f64, upper: f64) {
        match self {
            Self::BoRep(c) => (c.gamma, c.eta) = (lower, upper),
            Self::Stocbio(c) => (c.gamma, c.eta.initial) = (lower, upper),
            Self::Ttsa(c) => (c.beta.initial, c.alpha.initial) = (lower, upper),
            Self::Bsa(c) => (c.gamma, c.eta.initial) = (lower, upper),
            Self::Alset(c) => (c.beta, c.alpha.initial) = (lower, upper),
            Self::Amigo(c) => (c.gamma, c.alpha.initial) = (lower, upper),
            Self::Soba(c) => (c.rho.initial, c.gamma.initial) = (lower, upper),
            Self::Saba(c) => (c.rho, c.gamma) = (lower, upper),
            Self::MaSoba(c) => (c.beta.initial, c.alpha.initial) = (lower, upper),
            Self::F2sa(c) => (c.gamma_y, c.gamma_z, c.eta.initial) = (lower, lower, upper),
            Self::Mrbo(c) => (c.y_scale, c.x_scale) = (lower, upper),
            Self::Vrbo(c) => (c.beta, c.alpha) = (lower, upper),
            Self::Slip(c) => (c.gamma, c.eta.initial) = (lower, upper),
            Self::Accbo(c) => (c.gamma, c.eta.initial) = (lower, upper),
            Self::Adambo(c) => (c.gamma, c.eta.initial) = (lower, upper),
            Self::Maml(c) | Self::Anil(c) => (c.inner_step, c.outer_step.initial) = (lower, upper),
        }
    }

    /// Checks every value of the configuration, naming the first one out of range.
    pub fn validate(&self) -> Result<(), BilevelError> {
        match self {
            Self::BoRep(c) => c.validate(),
            Self::Stocbio(c) => c.validate(),
            Self::Ttsa(c) => c.validate(),
            Self::Bsa(c) => c.validate(),
            Self::Alset(c) => c.validate(),
            Self::Amigo(c) => c.validate(),
            Self::Soba(c) => c.validate(),
            Self::Saba(c) => c.validate(),
            Self::MaSoba(c) => c.validate(),
            Self::F2sa(c) => c.validate(),
            Self::Mrbo(c) => c.validate(),
            Self::Vrbo(c) => c.validate(),
            Self::Slip(c) => c.validate(),
            Self::Accbo(c) => c.validate(),
            Self::Adambo(c) => c.validate(),
            Self::Maml(c) | Self::Anil(c) => c.validate(),
        }
    }

    /// The optimizer, for variables shaped like `x` and `y` on `problem` (SABA reads the
    /// problem's split into fixed batches).
    pub fn build<E: Real, P: BilevelProblem<E> + 'static>(
        &self,
        x: &P::X,
        y: &P::Y,
        problem: &P,
    ) -> Result<Box<dyn BilevelOptimizer<E, P>>, BilevelError>
    where
        Cpu: Device<E>,
        P::X: 'static,
        P::Y: 'static,
    {
        Ok(match self.clone() {
            Self::BoRep(c) => Box::new(BoRep::<E, P>::new(c, x, y)?),
            Self::Stocbio(c) => Box::new(StocBio::new(c)?),
            Self::Ttsa(c) => Box::new(Ttsa::new(c)?),
            Self::Bsa(c) => Box::new(Bsa::new(c)?),
            Self::Alset(c) => Box::new(Alset::new(c)?),
            Self::Amigo(c) => Box::new(Amigo::new(c, y)?),
            Self::Soba(c) => Box::new(Soba::new(c, y)?),
            Self::Saba(c) => Box::new(Saba::new(c, x, y, problem)?),
            Self::MaSoba(c) => Box::new(MaSoba::new(c, x, y)?),
            Self::F2sa(c) => Box::new(F2sa::new(c, y)?),
            Self::Mrbo(c) => Box::new(Mrbo::new(c, x, y)?),
            Self::Vrbo(c) => Box::new(Vrbo::new(c, x, y)?),
            Self::Slip(c) => Box::new(Slip::new(c, x, y)?),
            Self::Accbo(c) => Box::new(AccBo::new(c, x, y)?),
            Self::Adambo(c) => Box::new(AdamBo::new(c, x)?),
            Self::Maml(c) => Box::new(Maml::<P::X, P::Y>::new(c, y)?),
            Self::Anil(c) => Box::new(Anil::<P::X, P::Y>::new(c, y)?),
        })
    }
}
