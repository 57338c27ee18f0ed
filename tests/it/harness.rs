//! The suite's own runner: every test declares what it needs, and a test whose tool is
//! missing is reported as ignored (failed under `CI=true`), never as passed.
//!
//! Tests are plain functions registered at the end of their module with [`tests!`]:
//!
//! ```text
//! crate::tests! {
//!     fn packs_a_disk ["qemu-img", "skopeo"];
//!     async fn downloads_a_base [FIXTURE_TOOLS];
//!     fn pushes_300_mb [TOOLS] ignore "six minutes on a throttled link";
//! }
//! ```
//!
//! A need is a program on PATH (or an absolute path) named by a string, a slice of them,
//! or a [`Need`] for anything else (a firmware file, a Python module, a tool a setup
//! script installs outside PATH). Needs are checked once, before any test runs.

use std::collections::HashMap;
use std::future::Future;

use libtest_mimic::{Arguments, Failed, Trial};

/// The script that installs the system tools the suite needs.
pub const SYSTEM_SETUP: &str = "ci/setup-system.sh";

/// Something a test needs from the machine, and the script that installs it.
pub struct Need {
    what: String,
    setup: &'static str,
    present: Box<dyn Fn() -> bool>,
}

impl Need {
    /// A need that holds when `present` says so; `what` names it in messages.
    pub fn check(
        what: impl Into<String>,
        setup: &'static str,
        present: impl Fn() -> bool + 'static,
    ) -> Need {
        Need {
            what: what.into(),
            setup,
            present: Box::new(present),
        }
    }

    /// Whether the machine has it (checked now).
    pub fn is_present(&self) -> bool {
        (self.present)()
    }

    /// What is missing and how to install it, for messages.
    pub fn describe(&self) -> String {
        format!("{} (run {})", self.what, self.setup)
    }

    /// A program on PATH, or an absolute path, installed by [`SYSTEM_SETUP`].
    pub fn tool(name: &'static str) -> Need {
        Need::check(name, SYSTEM_SETUP, move || {
            if name.starts_with('/') {
                std::path::Path::new(name).is_file()
            } else {
                diskforge::sys::exec::have(name)
            }
        })
    }
}

/// What may stand in a test's list of needs.
pub trait IntoNeeds {
    fn add_to(self, needs: &mut Vec<Need>);
}

impl IntoNeeds for Need {
    fn add_to(self, needs: &mut Vec<Need>) {
        needs.push(self);
    }
}

impl IntoNeeds for Vec<Need> {
    fn add_to(self, needs: &mut Vec<Need>) {
        needs.extend(self);
    }
}

impl IntoNeeds for &'static str {
    fn add_to(self, needs: &mut Vec<Need>) {
        needs.push(Need::tool(self));
    }
}

impl IntoNeeds for &'static [&'static str] {
    fn add_to(self, needs: &mut Vec<Need>) {
        needs.extend(self.iter().map(|t| Need::tool(t)));
    }
}

impl<const N: usize> IntoNeeds for &'static [&'static str; N] {
    fn add_to(self, needs: &mut Vec<Need>) {
        self[..].add_to(needs);
    }
}

/// One registered test.
pub struct Test {
    pub name: String,
    pub needs: Vec<Need>,
    /// Why the test runs only when asked (`--ignored`, `--include-ignored`).
    pub ignore: Option<&'static str>,
    pub run: fn(),
}

impl Test {
    /// `module` is the `module_path!()` of the registering module: the test is named
    /// `module::function` without the crate's name, so filters read as before.
    pub fn new(module: &str, function: &str, run: fn()) -> Test {
        let module = module.split_once("::").map_or(module, |(_, m)| m);
        Test {
            name: format!("{module}::{function}"),
            needs: Vec::new(),
            ignore: None,
            run,
        }
    }
}

/// Runs an async test body on a fresh current-thread runtime, as `#[tokio::test]` did.
pub fn block_on<F: Future<Output = ()>>(test: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the test")
        .block_on(test)
}

/// True under CI (`CI=true` or `CI=1`): a missing need then fails its tests.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Registers the module's tests; see the module documentation.
#[macro_export]
macro_rules! tests {
    (@acc [$($done:tt)*]) => {
        /// This module's tests, for the suite's runner.
        pub fn tests() -> Vec<$crate::harness::Test> {
            vec![$($done)*]
        }
    };
    (@acc [$($done:tt)*] async fn $name:ident $([$($need:expr),* $(,)?])? $(ignore $why:literal)?; $($rest:tt)*) => {
        $crate::tests!(@acc [$($done)*
            $crate::tests!(@test $name, || $crate::harness::block_on($name()) $(, [$($need),*])? $(, ignore $why)?),
        ] $($rest)*);
    };
    (@acc [$($done:tt)*] fn $name:ident $([$($need:expr),* $(,)?])? $(ignore $why:literal)?; $($rest:tt)*) => {
        $crate::tests!(@acc [$($done)*
            $crate::tests!(@test $name, $name $(, [$($need),*])? $(, ignore $why)?),
        ] $($rest)*);
    };
    (@test $name:ident, $run:expr $(, [$($need:expr),*])? $(, ignore $why:literal)?) => {{
        #[allow(unused_mut)]
        let mut test = $crate::harness::Test::new(module_path!(), stringify!($name), $run);
        $($($crate::harness::IntoNeeds::add_to($need, &mut test.needs);)*)?
        $(test.ignore = Some($why);)?
        test
    }};
    ($($rest:tt)*) => {
        $crate::tests!(@acc [] $($rest)*);
    };
}

/// Turns the registered tests into trials and runs those the arguments select.
pub fn run(tests: Vec<Test>) -> ! {
    let mut args = Arguments::from_args();
    // As libtest does: RUST_TEST_THREADS when --test-threads is not given.
    if args.test_threads.is_none() {
        args.test_threads = std::env::var("RUST_TEST_THREADS")
            .ok()
            .and_then(|n| n.parse().ok());
    }
    let ci = in_ci();
    let mut present: HashMap<String, bool> = HashMap::new();
    let mut ignored_for: std::collections::BTreeMap<String, usize> = Default::default();
    let mut trials = Vec::with_capacity(tests.len());
    for test in tests {
        let missing: Vec<String> = test
            .needs
            .iter()
            .filter(|n| {
                !*present
                    .entry(n.what.clone())
                    .or_insert_with(|| (n.present)())
            })
            .map(Need::describe)
            .collect();
        let trial = if missing.is_empty() {
            let run = test.run;
            Trial::test(test.name, move || {
                run();
                Ok(())
            })
            .with_ignored_flag(test.ignore.is_some())
        } else {
            let missing = missing.join(", ");
            let why = if ci {
                format!("missing under CI=true: {missing}")
            } else {
                format!("not run, missing: {missing}")
            };
            let kind = format!(
                "needs {}",
                test.needs
                    .iter()
                    .filter(|n| !present[&n.what])
                    .map(|n| n.what.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            Trial::test(test.name, move || Err(Failed::from(why)))
                .with_kind(kind)
                .with_ignored_flag(!ci)
        };
        if !ci && !missing.is_empty() && !args.is_filtered_out(&trial) {
            for need in test.needs.iter().filter(|n| !present[&n.what]) {
                *ignored_for.entry(need.describe()).or_default() += 1;
            }
        }
        trials.push(trial);
    }
    if !ignored_for.is_empty() && !args.list {
        eprintln!("ignored because what they need is not installed (CI=true fails them):");
        for (missing, count) in &ignored_for {
            eprintln!("  {missing}, needed by {count}");
        }
    }
    libtest_mimic::run(&args, trials).exit()
}
