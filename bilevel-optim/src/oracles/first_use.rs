//! The check of the problem ([`crate::check`]) that the oracles run at their first second-order
//! call: on in debug builds, so a dropped tape stops the first test that uses it.

use crate::check::{CheckConfig, CheckReport};
use crate::real::Real;

/// The check of the problem ([`crate::check`]) that runs at the first second-order call.
#[derive(Debug, Clone)]
pub(super) enum FirstUseCheck {
    Off,
    Pending(CheckConfig),
    Done(CheckReport),
}

/// The environment variable that turns the first-use check on (`1`) or off (`0`) whatever the
/// build, e.g. `BILEVEL_CHECK=1 cargo run --release ...` to check a release run.
pub const CHECK_ENV: &str = "BILEVEL_CHECK";

impl FirstUseCheck {
    /// On in debug builds (so every test checks its problem), off in release; [`CHECK_ENV`]
    /// overrides both.
    pub(super) fn default_for<E: Real>() -> Self {
        let on = match std::env::var(CHECK_ENV).as_deref() {
            Ok("1") => true,
            Ok("0") => false,
            _ => cfg!(debug_assertions),
        };
        if on {
            Self::Pending(CheckConfig::for_precision::<E>())
        } else {
            Self::Off
        }
    }
}
