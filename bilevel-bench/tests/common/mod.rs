//! What several test files share: the tiny task sizes that keep a test's runs to seconds.
#![allow(dead_code)]

use bilevel_bench::config::RunConfig;

/// `task` at tiny sizes: 40 hyper-rep heads on 2-shot tasks, batches of 8 or 16, 4 tokens.
pub fn tiny(task: &str) -> RunConfig {
    toml::from_str(&format!(
        r#"
        task = "{task}"
        [hyper_rep]
        train_tasks = 40
        shots = 2
        tasks_per_batch = 4
        max_len = 4
        [hyper_opt]
        batch = 8
        max_len = 4
        [hyper_clean]
        train_size = 2000
        batch = 16
        max_len = 4
        "#
    ))
    .unwrap()
}
