//! Every method of the library, one file each, behind one trait and selectable by name.
//!
//! Each method's file reads like its pseudocode and declares everything about the method once:
//! its configuration, which implements [`Method`] (name, step sizes, validation, how it is
//! built), and its memory, which implements [`rule::Rule`] (one iteration, with the memory's
//! saved form declared by [`crate::saved_memory!`]); [`rule::RuleOptimizer`] makes the two a
//! [`crate::optimizer::BilevelOptimizer`], doing the bookkeeping every method shares. The shared
//! pieces are in [`crate::steps`]
//! (SGD on y, the linear-system step, momentum, normalization, checked oracles, the iteration's
//! bookkeeping), [`crate::neumann`] (Neumann series) and [`crate::variance`] (STORM, SPIDER,
//! SAGA). The list at the end of this file declares the built-in methods: a new one is its file
//! plus one line there. [`registry`] finds methods by name and takes users' own; [`MethodConfig`]
//! holds any method's configuration, as configuration files name it (`method = "soba"`, ...).

pub mod config;
pub mod meta;
pub mod method;
pub mod neumann_family;
pub mod registry;
pub mod rule;

pub use config::MethodConfig;
pub use method::{Method, MethodVisitor};
pub use registry::register;

/// Declares the built-in methods, in the order of the documentation, from one list of
/// `file::Configuration` entries: each entry's module (the method's file), [`METHODS`] (their
/// names) and [`for_each_builtin`] (their types).
macro_rules! builtin_methods {
    ($($module:ident::$config:ident),+ $(,)?) => {
        $(pub mod $module;)+

        /// The names of the built-in methods, in the order of the documentation.
        pub const METHODS: [&str; [$(<$module::$config as Method>::NAME),+].len()] =
            [$(<$module::$config as Method>::NAME),+];

        /// Calls `visitor` with the configuration type of every built-in method, in the order of
        /// [`METHODS`].
        pub fn for_each_builtin<V: MethodVisitor>(visitor: &mut V) {
            $(visitor.visit::<$module::$config>();)+
        }
    };
}

builtin_methods![
    borep::BoRepConfig,
    stocbio::StocBioConfig,
    ttsa::TtsaConfig,
    bsa::BsaConfig,
    alset::AlsetConfig,
    amigo::AmigoConfig,
    soba::SobaConfig,
    saba::SabaConfig,
    ma_soba::MaSobaConfig,
    f2sa::F2saConfig,
    mrbo::MrboConfig,
    vrbo::VrboConfig,
    slip::SlipConfig,
    accbo::AccBoConfig,
    adambo::AdamBoConfig,
    maml::MamlConfig,
    anil::AnilConfig,
    aid_cg::AidCgConfig,
    itd::ItdConfig,
    maml_encoder::MamlEncoderConfig,
    fsla::FslaConfig,
    sustain::SustainConfig,
    f2ba::F2baConfig,
    srba::SrbaConfig,
    spaba::SpabaConfig,
    bome::BomeConfig,
    vr_adambo::VrAdamBoConfig,
];
