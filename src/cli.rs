//! Command-line types (clap derive) and nothing else.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Build KubeVirt containerDisk VM images from declarative recipes.
///
/// Exit codes: 0 success; 1 build or runtime failure; 2 invalid recipe or usage;
/// 3 a required tool is missing; 4 verification failed (checksum, signature,
/// containerDisk contract, boot or login check); 5 `outdated`: some image needs a
/// rebuild; 128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP): the
/// unfinished step's files are removed; 141 stdout was closed by its reader.
/// docs/cli.md has the details.
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

/// Options given before the subcommand. `-v`, `-q` and `--json-events` are accepted
/// anywhere and listed once, in `diskforge --help`; the cache, work-directory, offline
/// and accelerator options are offered again by exactly the subcommands that use them
/// ([`COMMAND_OPTIONS`]), so `validate --accel` is an error rather than an ignored flag.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Global options")]
pub struct GlobalOpts {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors and results.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Emit progress as versioned JSON-lines events on stderr (docs/events.md).
    #[arg(long = "json-events", global = true)]
    pub json_events: bool,
    /// Cache for base images, downloads and kept stages [default: $XDG_CACHE_HOME/diskforge].
    #[arg(long, env = "DISKFORGE_CACHE_DIR", value_name = "DIR", help_heading = MACHINE_HEADING)]
    pub cache_dir: Option<PathBuf>,
    /// Where intermediate disks are written [default: CACHE/work].
    #[arg(long, env = "DISKFORGE_WORK_DIR", value_name = "DIR", help_heading = MACHINE_HEADING)]
    pub work_dir: Option<PathBuf>,
    /// Keep intermediate files after the build, for debugging.
    #[arg(long, help_heading = MACHINE_HEADING)]
    pub keep_work_dir: bool,
    /// Use only the cache; fail if something must be downloaded.
    #[arg(long, help_heading = MACHINE_HEADING)]
    pub offline: bool,
    /// Accelerator for QEMU and libguestfs.
    #[arg(long, value_enum, env = "DISKFORGE_ACCEL", default_value_t = Accel::Auto, help_heading = MACHINE_HEADING)]
    pub accel: Accel,
}

/// Where `diskforge --help` lists the options of [`COMMAND_OPTIONS`].
const MACHINE_HEADING: &str =
    "Cache and machine options (also after the subcommands that use them)";

/// The options of [`GlobalOpts`] that only some subcommands use, with the subcommands
/// that offer them (a path `cache` covers `cache list` and `cache prune`).
pub const COMMAND_OPTIONS: &[(&str, &[&str])] = &[
    (
        "cache_dir",
        &[
            "build", "plan", "outdated", "validate", "pack", "push", "cache",
        ],
    ),
    (
        "work_dir",
        &["build", "pack", "push", "inspect", "run", "verify"],
    ),
    ("keep_work_dir", &["build"]),
    ("offline", &["build", "plan", "outdated", "validate"]),
    ("accel", &["build", "pack", "run", "verify"]),
];

/// The command line's definition: [`Cli`] with the options shared by every subcommand
/// listed once, in `diskforge --help`, and each subcommand offering only the options
/// of [`COMMAND_OPTIONS`] it uses.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let root = Cli::command();
    // A subcommand that already holds an argument of a global's id keeps its own
    // (hidden) copy instead of the shown one clap would propagate.
    let hidden: Vec<clap::Arg> = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.clone().hide(true))
        .collect();
    let shared: Vec<String> = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| match (a.get_short(), a.get_long()) {
            (Some(s), _) => format!("-{s}"),
            (None, Some(l)) => format!("--{l}"),
            (None, None) => a.get_id().to_string(),
        })
        .collect();
    let offered: Vec<(clap::Arg, &[&str])> = COMMAND_OPTIONS
        .iter()
        .filter_map(|(id, cmds)| {
            let a = root.get_arguments().find(|a| a.get_id() == *id)?;
            Some((a.clone().help_heading(None::<&str>), *cmds))
        })
        .collect();
    let note = format!(
        "Global options ({}) go before or after the subcommand: see `diskforge --help`.",
        shared.join(", ")
    );
    fn offer(
        cmd: clap::Command,
        top: &str,
        hidden: &[clap::Arg],
        offered: &[(clap::Arg, &[&str])],
        note: &str,
    ) -> clap::Command {
        let mut cmd = cmd.after_help(note.to_string());
        for a in hidden {
            cmd = cmd.arg(a.clone());
        }
        for (a, cmds) in offered {
            if cmds.contains(&top) {
                cmd = cmd.arg(a.clone());
            }
        }
        cmd.mut_subcommands(|sc| offer(sc, top, hidden, offered, note))
    }
    root.mut_subcommands(|sc| {
        let top = sc.get_name().to_string();
        offer(sc, &top, &hidden, &offered, &note)
    })
}

impl Cli {
    /// Parses the process's arguments with [`command`] (exits on `--help`, `--version`
    /// and wrong usage, as clap does).
    pub fn parse_args() -> Cli {
        Self::parse_from_matches(command().get_matches()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (the program name first) with [`command`].
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::parse_from_matches(command().try_get_matches_from(args)?)
    }

    /// [`Cli`] from matches, with an option of [`COMMAND_OPTIONS`] given after the
    /// subcommand taking the place of the same option given before it.
    fn parse_from_matches(matches: clap::ArgMatches) -> Result<Cli, clap::Error> {
        use clap::FromArgMatches;
        let mut cli = Cli::from_arg_matches(&matches)?;
        let mut m = &matches;
        while let Some((_, sub)) = m.subcommand() {
            m = sub;
        }
        let given = |id: &str| {
            m.try_contains_id(id).unwrap_or(false)
                && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
        };
        let g = &mut cli.global;
        if given("cache_dir") {
            g.cache_dir = m.get_one::<PathBuf>("cache_dir").cloned();
        }
        if given("work_dir") {
            g.work_dir = m.get_one::<PathBuf>("work_dir").cloned();
        }
        if given("keep_work_dir") {
            g.keep_work_dir = m.get_flag("keep_work_dir");
        }
        if given("offline") {
            g.offline = m.get_flag("offline");
        }
        if given("accel") {
            if let Some(a) = m.get_one::<Accel>("accel") {
                g.accel = *a;
            }
        }
        Ok(cli)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// KVM when it works, TCG (with a warning) otherwise.
    Auto,
    /// KVM, or fail.
    Kvm,
    /// Software emulation.
    Tcg,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check recipes and catalog files without side effects.
    Validate(ValidateArgs),
    /// Print the ordered steps of a build with their exact command lines.
    Plan(PlanArgs),
    /// Build images from recipes.
    Build(Box<BuildArgs>),
    /// Say which recipes need a rebuild, without building (exit 5 when some do).
    Outdated(OutdatedArgs),
    /// Pack an existing qcow2 or raw disk into a containerDisk image.
    Pack(PackArgs),
    /// Push an image from an OCI layout or oci-archive to a registry, or promote one
    /// registry image to another repository by digest.
    Push(PushArgs),
    /// Show an image's layers, labels and disk without pulling it all.
    Inspect(InspectArgs),
    /// Combine per-architecture images into one multi-architecture index.
    Index(IndexArgs),
    /// Boot an image, layout or disk locally in QEMU on a throwaway overlay.
    Run(RunArgs),
    /// Check an image against the containerDisk contract KubeVirt enforces.
    Verify(VerifyArgs),
    /// Sign an image's manifest digest (cosign format, `sha256-<hex>.sig`).
    Sign(SignArgs),
    /// Write a commented starter recipe that validates.
    Init(InitArgs),
    /// Print the recipe JSON Schema.
    Schema,
    /// Base image catalog.
    #[command(subcommand)]
    Base(BaseCommand),
    /// Download and stage cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Print the manual page diskforge(1), or write every page (one per subcommand).
    Man {
        /// Write diskforge.1 and diskforge-SUBCOMMAND.1 (for `man -M` or
        /// /usr/local/share/man/man1) into DIR instead of printing diskforge(1).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Print shell completions.
    Completions {
        /// The shell to print completions for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The recipe file to write (never overwritten).
    #[arg(value_name = "FILE", default_value = "recipe.yaml")]
    pub recipe: PathBuf,
    /// The catalog entry to start from (`diskforge base list`).
    #[arg(long, value_name = "NAME", default_value = "debian-12")]
    pub base: String,
    /// Base image catalog directory [default: base-images/ next to the recipe, then built-in].
    #[arg(long, value_name = "DIR", env = "DISKFORGE_CATALOG")]
    pub catalog: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Recipe files (`recipes/*.yaml`) or catalog entries (`base-images/*.yaml`).
    #[arg(required = true, value_name = "FILE")]
    pub recipes: Vec<PathBuf>,
    #[command(flatten)]
    pub inputs: RecipeInputs,
}

#[derive(Debug, Args, Clone, Default)]
pub struct RecipeInputs {
    /// Set a recipe variable (overrides `vars:` and the environment).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Base image catalog directory [default: base-images/ next to the recipe, then built-in].
    #[arg(long, value_name = "DIR", env = "DISKFORGE_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Build for this architecture (overrides the recipe's `base.arch`).
    #[arg(long, value_enum)]
    pub arch: Option<ArchArg>,
    /// Use this local disk image as the base instead of the recipe's (its `base.format`
    /// and `base.arch` still apply; default qcow2). Allowed wherever it lies.
    #[arg(long, value_name = "PATH")]
    pub base: Option<PathBuf>,
    /// Let the base and `customize.files[].source` name files under DIR (absolute paths,
    /// `file://` URLs, symbolic links), judged by their real paths (repeatable; also
    /// DISKFORGE_ALLOW_PATH, colon-separated).
    #[arg(long, value_name = "DIR")]
    pub allow_path: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchArg {
    Amd64,
    Arm64,
}

/// How registries are reached (shared by every command that talks to one).
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Registry options")]
pub struct RegistryArgs {
    /// `--tls-verify=false` allows plain HTTP and unverified TLS for registries (a bare
    /// `--tls-verify` is `--tls-verify=true`, as in podman and skopeo).
    #[arg(
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub tls_verify: bool,
    /// Registry credentials USER:PASSWORD.
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        hide_env_values = true,
        env = "DISKFORGE_CREDS"
    )]
    pub creds: Option<String>,
    /// Read credentials from this auth file only (containers-auth.json format).
    #[arg(long, value_name = "FILE", env = "REGISTRY_AUTH_FILE")]
    pub authfile: Option<PathBuf>,
    /// Trust the CA certificates (*.crt) and use the client certificate (*.cert, *.key)
    /// in DIR.
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Seconds a registry may stay silent (and the window in which a transfer must make
    /// progress) before the request is retried.
    #[arg(long, value_name = "SECONDS", default_value = "60")]
    pub registry_timeout: u64,
    /// Read registries.conf from FILE [default: $CONTAINERS_REGISTRIES_CONF, else
    /// ~/.config/containers/registries.conf, else /etc/containers/registries.conf, each
    /// with its registries.conf.d drop-ins]: prefixes, location rewrites, mirrors for
    /// reads, `insecure` and `blocked`, as in podman and skopeo (a file named here gets
    /// the system's and the user's drop-ins too, as in containers/image).
    #[arg(long, value_name = "FILE")]
    pub registries_conf: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The recipe file.
    #[arg(value_name = "RECIPE")]
    pub recipe: PathBuf,
    #[command(flatten)]
    pub inputs: RecipeInputs,
    /// Plan an incremental build (see build --incremental).
    #[arg(long)]
    pub incremental: bool,
    /// Plan a build that stops after the finished disk (see build --disk-only).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["output", "compression", "compression_level"])]
    pub disk_only: Option<PathBuf>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Destinations, as for build.
    #[arg(long, short, value_name = "DEST", help_heading = "Output options")]
    pub output: Vec<String>,
    #[command(flatten)]
    pub layer: CompressionOpts,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Recipe files; several build in parallel (--jobs).
    #[arg(required = true, value_name = "RECIPE")]
    pub recipes: Vec<PathBuf>,
    #[command(flatten)]
    pub inputs: RecipeInputs,
    /// Stop after the finished disk; write it here instead of packing (no image, so no
    /// destination, digest, manifest or signature options).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = [
            "destinations",
            "compression",
            "compression_level",
            "digest_file",
            "print_vm_manifest",
            "kubevirt_manifests",
            "sign_key",
        ]
    )]
    pub disk_only: Option<PathBuf>,
    /// Build even when every destination already holds an image built from the same
    /// inputs (recipe, base, files, diskforge version).
    #[arg(long)]
    pub force: bool,
    /// Keep the disk after growth and package installation in the cache, and start
    /// from it when only later steps changed; keep the customized disk too, and
    /// rewrite files on it on the host when only their content (files, passwords, SSH
    /// keys, ttyd's command line and credential) changed or users were appended.
    #[arg(long)]
    pub incremental: bool,
    /// Recipes built at the same time [default: what the machine's cores and memory carry].
    #[arg(long, short, value_name = "N")]
    pub jobs: Option<usize>,
    /// Build only recipes whose name matches GLOB (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub only: Vec<String>,
    /// Skip recipes whose name matches GLOB (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub except: Vec<String>,
    /// Stop at the first failing recipe (others keep going by default).
    #[arg(long)]
    pub fail_fast: bool,
    /// Write a JSON report of every recipe (status, digest, duration, layer size, error).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Sign each image (by digest) and its provenance with this ECDSA P-256 key
    /// (PKCS#8 PEM, or cosign's encrypted format).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    #[command(flatten)]
    pub key_password: KeyPassword,
    /// Destination: `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker://HOST/REPO:TAG`,
    /// `docker-archive:FILE[:NAME[:TAG]]` (for docker/podman load) or
    /// `containers-storage:NAME[:TAG]` (podman's and CRI-O's store, through skopeo)
    /// (repeatable) [default: the recipe's repository and tags, else oci:out/NAME:TAG].
    #[arg(
        long = "output",
        short = 'o',
        value_name = "DEST",
        help_heading = "Output options"
    )]
    pub destinations: Vec<String>,
    #[command(flatten)]
    pub kubevirt: KubevirtOpts,
    #[command(flatten)]
    pub output: OutputOpts,
    #[command(flatten)]
    pub limit: LayerLimitOpts,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// The largest layer a push may send.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Output options")]
pub struct LayerLimitOpts {
    /// Refuse, before uploading, to push a compressed layer larger than SIZE (`5G`,
    /// `500M`); the documented limits of ghcr.io, docker.io and quay.io apply anyway
    /// (docs/cli.md).
    #[arg(long, value_name = "SIZE")]
    pub max_layer_size: Option<String>,
}

/// Where the password of an encrypted signing key comes from: never the command line.
#[derive(Debug, Args, Clone, Default)]
pub struct KeyPassword {
    /// Read the signing key's password from FILE [default: the DISKFORGE_KEY_PASSWORD
    /// environment variable].
    #[arg(long, value_name = "FILE")]
    pub key_password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// `docker://HOST/REPO:TAG|@sha256:…` or `oci:DIR[:TAG]`; the manifest digest is signed.
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// The private key (PKCS#8 PEM, or cosign's encrypted format).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    #[command(flatten)]
    pub key_password: KeyPassword,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct OutdatedArgs {
    /// Recipe files.
    #[arg(required = true, value_name = "RECIPE")]
    pub recipes: Vec<PathBuf>,
    #[command(flatten)]
    pub inputs: RecipeInputs,
    /// Destinations to check, as for build [default: the recipe's].
    #[arg(long, short, value_name = "DEST", help_heading = "Output options")]
    pub output: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Output options")]
pub struct OutputOpts {
    #[command(flatten)]
    pub layer: CompressionOpts,
    #[command(flatten)]
    pub report: ReportOpts,
}

/// How the layer is compressed (build, plan).
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Output options")]
pub struct CompressionOpts {
    /// Layer compression [default: the recipe's `output.compression`, else gzip].
    #[arg(long, value_enum)]
    pub compression: Option<crate::oci::Compression>,
    /// Compression level (gzip 1-9, zstd 1-19) [default: the recipe's, else gzip 4,
    /// zstd 2].
    #[arg(long, value_name = "N")]
    pub compression_level: Option<u32>,
}

/// How `pack` compresses the layer: the same options as [`CompressionOpts`], whose
/// defaults `pack --help` states without a recipe (there is none).
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Output options")]
pub struct PackCompressionOpts {
    /// Layer compression [default: gzip].
    #[arg(long, value_enum)]
    pub compression: Option<crate::oci::Compression>,
    /// Compression level (gzip 1-9, zstd 1-19) [default: gzip 4, zstd 2].
    #[arg(long, value_name = "N")]
    pub compression_level: Option<u32>,
}

/// KubeVirt and CDI manifests for the written image (build, pack, push, index).
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Output options")]
pub struct KubevirtOpts {
    /// Write KubeVirt and CDI manifests for the image into DIR (build: DIR/NAME/ for each
    /// image; index: DIR/ARCH/ for each architecture, a DataImportCron importing it from
    /// the tag). A cluster pulls from a registry: the image must go to a docker://
    /// destination (push: from a layout source).
    #[arg(long, value_name = "DIR")]
    pub kubevirt_manifests: Option<PathBuf>,
    /// How CDI's DataImportCron pulls the image (`node`: the node's container runtime).
    #[arg(long, value_enum, requires = "kubevirt_manifests")]
    pub pull_method: Option<PullMethodArg>,
}

/// Where the result is reported besides stdout.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Output options")]
pub struct ReportOpts {
    /// Write the manifest digest (`sha256:…`) of the written image to FILE.
    #[arg(long, visible_alias = "digestfile", value_name = "FILE")]
    pub digest_file: Option<PathBuf>,
    /// Print a KubeVirt VirtualMachine manifest (YAML, the only thing on stdout) that
    /// boots the pushed image pinned by digest.
    #[arg(long)]
    pub print_vm_manifest: bool,
}

/// How CDI pulls a registry image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullMethodArg {
    /// CDI's importer pod reads the registry (CDI's default).
    Pod,
    /// The node's container runtime pulls the image, with the node's registry
    /// configuration and image cache.
    Node,
}

/// `--compression` takes the layer compression's own names (`Compression::name`), the
/// same words the recipe's `output.compression` uses.
impl ValueEnum for crate::oci::Compression {
    fn value_variants<'a>() -> &'a [Self] {
        use crate::oci::Compression;
        &[Compression::Gzip, Compression::Zstd, Compression::None]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

#[derive(Debug, Args)]
pub struct PackArgs {
    /// A qcow2 or raw disk image.
    #[arg(value_name = "DISK")]
    pub disk: PathBuf,
    /// The disk's file name under /disk/ [default: disk.qcow2 or disk.img].
    #[arg(long)]
    pub disk_name: Option<String>,
    /// Image architecture.
    #[arg(long, value_enum, default_value = "amd64")]
    pub arch: ArchArg,
    /// Extra label KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// `bios`, `uefi` or `uefi-secure-boot`: recorded in the image's
    /// `io.diskforge.firmware` label and the VM manifest (`run` and `verify` boot with it);
    /// for UEFI the disk must hold an EFI system partition with a loader (a shim for
    /// Secure Boot), else nothing is written (exit 4) [default: none recorded; the VM
    /// manifest boots BIOS].
    #[arg(long, value_name = "FIRMWARE")]
    pub firmware: Option<String>,
    /// Destination: `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker://HOST/REPO:TAG`,
    /// `docker-archive:FILE[:NAME[:TAG]]` (for docker/podman load) or
    /// `containers-storage:NAME[:TAG]` (podman's and CRI-O's store, through skopeo)
    /// (repeatable) [default: oci:out/NAME:latest, NAME from the disk's file name].
    #[arg(
        long = "output",
        short = 'o',
        value_name = "DEST",
        help_heading = "Output options"
    )]
    pub destinations: Vec<String>,
    #[command(flatten)]
    pub layer: PackCompressionOpts,
    #[command(flatten)]
    pub kubevirt: KubevirtOpts,
    #[command(flatten)]
    pub report: ReportOpts,
    #[command(flatten)]
    pub limit: LayerLimitOpts,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// OCI layout directory (`[oci:]DIR[:TAG]`) or archive (`oci-archive:FILE[:TAG]`); or
    /// `docker://HOST/REPO@sha256:…` (or `:TAG`, resolved once) to promote a registry
    /// image by digest.
    #[arg(value_name = "LAYOUT[:TAG]|docker://SOURCE")]
    pub layout: String,
    /// `docker://HOST/REPO:TAG` (give several for several tags);
    /// `docker-archive:FILE[:NAME[:TAG]]` for `docker load` / `podman load`;
    /// `containers-storage:NAME[:TAG]` into the local podman / CRI-O image store
    /// (through skopeo).
    #[arg(required = true, value_name = "DEST")]
    pub destinations: Vec<String>,
    #[command(flatten)]
    pub kubevirt: KubevirtOpts,
    /// Promotion: copy the cosign signature (`sha256-<hex>.sig`) and the referrers (SBOM,
    /// provenance) of the image and of each platform manifest too.
    #[arg(long, help_heading = "Promotion options")]
    pub with_attachments: bool,
    /// Promotion: fail before writing anything unless the source is this digest.
    #[arg(long, value_name = "sha256:…", help_heading = "Promotion options")]
    pub expect_digest: Option<String>,
    #[command(flatten)]
    pub report: ReportOpts,
    #[command(flatten)]
    pub limit: LayerLimitOpts,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// `docker://HOST/REPO:TAG`, `oci:DIR[:TAG]` or `oci-archive:FILE`.
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Check signatures and the provenance against this public key (PEM).
    #[arg(long, value_name = "PUBKEY")]
    pub key: Option<PathBuf>,
    /// Print JSON (the same as `--format json`).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// `json`, or a template of fields such as `{{.Digest}}` or `{{.Labels.KEY}}`
    /// (docs/cli.md lists them); one line per image.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Print the manifest (or index) the reference names, byte for byte.
    #[arg(long, conflicts_with_all = ["json", "format", "config", "key"])]
    pub raw: bool,
    /// Print the image's config, byte for byte.
    #[arg(long, conflicts_with_all = ["json", "format", "key"])]
    pub config: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct IndexArgs {
    /// The index destination `docker://HOST/REPO:TAG` or `oci:DIR:TAG`.
    #[arg(value_name = "DEST")]
    pub destination: String,
    /// Per-architecture images (same registry and repository, or the same layout).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
    #[command(flatten)]
    pub kubevirt: KubevirtOpts,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// An image (`docker://…`, `oci:DIR[:TAG]`, `oci-archive:FILE`), or a disk file.
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value = "2048")]
    pub memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value = "2")]
    pub cpus: u32,
    /// Attach the serial console to this terminal.
    #[arg(long)]
    pub console: bool,
    /// Wait for boot and ttyd, then shut down: exit 0 on success, 4 on a failed check.
    #[arg(long)]
    pub check: bool,
    /// How long `--check` waits for the guest, in seconds.
    #[arg(long, value_name = "SECONDS", default_value = "600")]
    pub timeout: u64,
    /// Guest port ttyd listens on; 0 makes `--check` wait for a login prompt on the
    /// serial console instead (a base without ttyd).
    #[arg(long, default_value = "7681")]
    pub ttyd_port: u16,
    /// Guest port of the web desktop (noVNC) to forward, print and, with `--check`,
    /// wait for [default: the image's `io.diskforge.desktop.port` label]; 0: none.
    #[arg(long, value_name = "PORT")]
    pub desktop_port: Option<u16>,
    /// ttyd's own credential (its `-c USER:PASSWORD`), when the image sets one.
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        hide_env_values = true,
        env = "DISKFORGE_TTYD_AUTH"
    )]
    pub ttyd_auth: Option<String>,
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
    /// `bios`, `uefi` or `uefi-secure-boot` [default: the image's `io.diskforge.firmware`
    /// label, else bios]. UEFI boots OVMF (Secure Boot: q35 with SMM and Microsoft's
    /// keys, as KubeVirt does); a disk without what UEFI needs is refused before QEMU
    /// starts.
    #[arg(long, value_name = "FIRMWARE")]
    pub firmware: Option<String>,
    /// With `--check`: also require the QEMU guest agent to answer `guest-ping` and
    /// `guest-get-osinfo` [default: when the image's `io.diskforge.guest-agent` label
    /// says it has one].
    #[arg(long)]
    pub guest_agent: bool,
    /// cloud-config user-data (`#cloud-config` YAML) attached as a NoCloud seed disk
    /// (`cidata`), as KubeVirt's cloudInitNoCloud volume; `${env:NAME}` and
    /// `${file:PATH}` in it are replaced and never shown. `--check` then waits for
    /// cloud-init to finish.
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// `docker://HOST/REPO@sha256:…|:TAG`, `oci:DIR[:TAG]` or `oci-archive:FILE`.
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Expected virtual size of the disk (e.g. `4G`).
    #[arg(long)]
    pub size: Option<String>,
    /// Also boot it with `run --check`.
    #[arg(long)]
    pub boot: bool,
    /// Also require a valid signature by this public key (PEM) for the digest.
    #[arg(long, value_name = "PUBKEY")]
    pub key: Option<PathBuf>,
    /// Also check the disk has what this firmware needs to boot it (`bios`: MBR boot
    /// code; `uefi`: an EFI system partition with a loader; `uefi-secure-boot`: a shim
    /// there). One read-only appliance launch.
    #[arg(long, value_name = "FIRMWARE")]
    pub firmware: Option<String>,
    /// Print the result as one JSON document (checks passed and failed).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Subcommand)]
pub enum BaseCommand {
    /// List catalog entries with their URLs and how they are verified.
    List {
        /// Catalog directory [default: base-images/ here or above, then built-in].
        #[arg(long, value_name = "DIR", env = "DISKFORGE_CATALOG")]
        catalog: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cached files.
    List,
    /// Remove cached files and kept stages not used for DAYS days.
    Prune {
        /// Age in days of what is removed.
        #[arg(long, value_name = "DAYS", default_value = "30")]
        days: u64,
        /// Remove everything.
        #[arg(long)]
        all: bool,
    },
}
