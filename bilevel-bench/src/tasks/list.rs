//! The tasks of the bench, listed once ([`crate::with_task_list`]).

/// Calls `$callback!` with the tasks, in the order of the documentation: per task its variant of
/// [`crate::run::config::TaskName`], its key (the `[section]` of a run's configuration, also
/// the field of [`crate::run::config::RunConfig`]), the type implementing
/// [`crate::tasks::task::Task`], and a line describing it. The one list a new task joins; the task names, the configuration's
/// sections and every dispatch over tasks are generated from it.
#[macro_export]
macro_rules! with_task_list {
    ($callback:ident) => {
        $callback! {
            HyperRep, hyper_rep, $crate::tasks::hyper_rep::HyperRepTask,
                "Hyper-representation (meta-learning) on Amazon reviews.";
            HyperOpt, hyper_opt, $crate::tasks::hyper_opt::HyperOptTask,
                "Hyperparameter optimization (L2 coefficients) on Amazon reviews.";
            HyperClean, hyper_clean, $crate::tasks::hyper_clean::HyperCleanTask,
                "Data hyper-cleaning on Sentiment140.";
        }
    };
}
