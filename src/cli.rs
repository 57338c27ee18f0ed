//! Command-line types (clap derive) and nothing else.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Build KubeVirt containerDisk VM images from declarative recipes.
///
/// Exit codes: 0 success; 1 build or runtime failure; 2 invalid recipe or usage;
/// 3 a required tool is missing; 4 verification failed (checksum, contract, boot check);
/// 130 interrupted by Ctrl-C (the unfinished step's files are removed).
#[derive(Debug, Parser)]
#[command(
    name = "diskforge",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalOpts {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors and results.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Emit progress as JSON-lines events on stderr (for CI).
    #[arg(long = "json-events", global = true)]
    pub json_events: bool,
    /// Cache for base images and downloads [default: $XDG_CACHE_HOME/diskforge].
    #[arg(long, global = true, env = "DISKFORGE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Where intermediate disks are written [default: a temporary directory].
    #[arg(long, global = true, env = "DISKFORGE_WORK_DIR", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Keep intermediate files after the build, for debugging.
    #[arg(long, global = true)]
    pub keep_work_dir: bool,
    /// Use only the cache; fail if something must be downloaded.
    #[arg(long, global = true)]
    pub offline: bool,
    /// Accelerator for QEMU and libguestfs.
    #[arg(long, global = true, value_enum, env = "DISKFORGE_ACCEL", default_value_t = Accel::Auto)]
    pub accel: Accel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// KVM when it works, TCG (with a warning) otherwise.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check recipes without side effects.
    Validate(ValidateArgs),
    /// Print the ordered steps of a build with their exact command lines.
    Plan(PlanArgs),
    /// Build images from recipes.
    Build(BuildArgs),
    /// Pack an existing qcow2 or raw disk into a containerDisk image.
    Pack(PackArgs),
    /// Push an image from an OCI layout to a registry.
    Push(PushArgs),
    /// Show an image's layers, labels and disk without pulling it all.
    Inspect(InspectArgs),
    /// Combine per-architecture images into one multi-architecture index.
    Index(IndexArgs),
    /// Boot an image, layout or disk locally in QEMU on a throwaway overlay.
    Run(RunArgs),
    /// Check an image against the containerDisk contract KubeVirt enforces.
    Verify(VerifyArgs),
    /// Print the recipe JSON Schema.
    Schema,
    /// Base image catalog.
    #[command(subcommand)]
    Base(BaseCommand),
    /// Download cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Recipe or catalog files.
    #[arg(required = true, value_name = "RECIPE")]
    pub recipes: Vec<PathBuf>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct RecipeInputs {
    /// Set a recipe variable (overrides `vars:` and the environment).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Base image catalog directory [default: base-images/ next to the recipe, then built-in].
    #[arg(long, value_name = "DIR", env = "DISKFORGE_CATALOG")]
    pub catalog: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    pub recipe: PathBuf,
    #[command(flatten)]
    pub inputs: RecipeInputs,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[arg(required = true, value_name = "RECIPE")]
    pub recipes: Vec<PathBuf>,
    #[command(flatten)]
    pub inputs: RecipeInputs,
    #[command(flatten)]
    pub output: OutputOpts,
    /// Stop after the finished disk; write it here instead of packing.
    #[arg(long, value_name = "FILE")]
    pub disk_only: Option<PathBuf>,
    /// Build even when every destination already holds an image built from the same
    /// inputs (recipe, base, files, diskforge version).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct OutputOpts {
    /// Destination: `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]` or `docker://HOST/REPO:TAG`
    /// (repeatable) [default: oci:out/NAME].
    #[arg(long, short, value_name = "DEST")]
    pub output: Vec<String>,
    /// Layer compression (overrides the recipe).
    #[arg(long, value_enum)]
    pub compression: Option<CompressionArg>,
    /// Compression level (gzip 1-9, zstd 1-19).
    #[arg(long)]
    pub compression_level: Option<u32>,
    /// `--tls-verify=false` allows plain HTTP and unverified TLS for registry destinations.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tls_verify: bool,
    /// Registry credentials `USER:PASSWORD` [env: DISKFORGE_CREDS].
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        hide_env_values = true,
        env = "DISKFORGE_CREDS"
    )]
    pub creds: Option<String>,
    /// Write `REPO@sha256:…` of the pushed image to this file.
    #[arg(long, value_name = "FILE")]
    pub digest_file: Option<PathBuf>,
    /// Print a KubeVirt VirtualMachine manifest using the pushed image, pinned by digest.
    #[arg(long)]
    pub print_vm_manifest: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
    None,
}

#[derive(Debug, Args)]
pub struct PackArgs {
    /// A qcow2 or raw disk image.
    pub disk: PathBuf,
    #[command(flatten)]
    pub output: OutputOpts,
    /// The disk's file name under /disk/ [default: disk.qcow2 or disk.img].
    #[arg(long)]
    pub disk_name: Option<String>,
    /// Image architecture.
    #[arg(long, default_value = "amd64")]
    pub arch: String,
    /// Extra label KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// OCI layout directory, with an optional `:TAG`.
    pub layout: String,
    /// `docker://HOST/REPO:TAG` (repeatable tags: give several destinations).
    #[arg(required = true)]
    pub destinations: Vec<String>,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// `docker://HOST/REPO:TAG`, `oci:DIR[:TAG]` or `oci-archive:FILE`.
    pub image: String,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tls_verify: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IndexArgs {
    /// The index destination `docker://HOST/REPO:TAG` or `oci:DIR:TAG`.
    pub destination: String,
    /// Per-architecture images (same registry and repository).
    #[arg(required = true)]
    pub images: Vec<String>,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tls_verify: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// An image (`docker://…`, `oci:DIR[:TAG]`), or a disk file.
    pub image: String,
    #[arg(long, default_value = "2048")]
    pub memory: u32,
    #[arg(long, default_value = "2")]
    pub cpus: u32,
    /// Attach the serial console to this terminal.
    #[arg(long)]
    pub console: bool,
    /// Wait for boot and ttyd, then shut down: exit 0 on success.
    #[arg(long)]
    pub check: bool,
    /// How long `--check` waits for the guest (seconds).
    #[arg(long, default_value = "600")]
    pub timeout: u64,
    /// Guest port ttyd listens on; 0 makes `--check` wait for a login prompt on the
    /// serial console instead (a base without ttyd).
    #[arg(long, default_value = "7681")]
    pub ttyd_port: u16,
    /// With `--check`: also log in over ttyd as USER:PASSWORD and run a command.
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        hide_env_values = true,
        env = "DISKFORGE_LOGIN"
    )]
    pub login: Option<String>,
    /// With `--login`: the shell command to run after logging in [default: print the
    /// user, the root filesystem size and the machine-id].
    #[arg(long, value_name = "CMD")]
    pub command: Option<String>,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tls_verify: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// `docker://HOST/REPO@sha256:…|:TAG`, `oci:DIR[:TAG]` or `oci-archive:FILE`.
    pub image: String,
    /// Expected virtual size of the disk (e.g. `4G`).
    #[arg(long)]
    pub size: Option<String>,
    /// Also boot it with `run --check`.
    #[arg(long)]
    pub boot: bool,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tls_verify: bool,
}

#[derive(Debug, Subcommand)]
pub enum BaseCommand {
    /// List catalog entries with their URLs and checksum sources.
    List {
        #[arg(long, value_name = "DIR", env = "DISKFORGE_CATALOG")]
        catalog: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cached files.
    List,
    /// Remove cached files not used for DAYS days.
    Prune {
        #[arg(long, default_value = "30")]
        days: u64,
        /// Remove everything.
        #[arg(long)]
        all: bool,
    },
}
