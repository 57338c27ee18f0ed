//! The steps of a build as values. `Plan::new` decides every step once — which base,
//! which backing file, whether and to what size the disk grows, what each appliance
//! launch does — and stores the decision as the step's payload. `plan` prints the
//! payload ([`Step::name`], [`Step::description`], [`Step::commands_on`],
//! [`Step::operations`]); `run` executes the same payload, so what `plan` lists is
//! what `build` runs by construction.
//!
//! Adding a step: one variant here (its payload and its arm in each `Step` method) and
//! one arm in `pipeline::run`.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::base::CachedBase;
use crate::guest::fish::{Drive, Fish};
use crate::guest::script::Customization;
use crate::guest::selinux::Relabel;
use crate::recipe::{DiskFormat, Size};
use crate::sys::exec::Cmd;
use crate::sys::qemu_img;

/// A step's payload with the key of its inputs (chained to the previous step's key).
#[derive(Debug, Clone)]
pub struct Keyed<T> {
    pub key: String,
    pub step: T,
}

/// Where the base comes from.
#[derive(Debug, Clone)]
pub enum BaseAction {
    /// Verified in the cache: nothing to do.
    Cached(CachedBase),
    /// Downloaded (or copied) and verified; `from` says from where and against what.
    Download { from: String },
    /// Built from distribution packages, then cached.
    Build { name: String, commands: Vec<Cmd> },
}

/// What a new qcow2 overlay sits on.
#[derive(Debug, Clone)]
pub enum Backing {
    /// The cached base (never modified). `path` is its cached file, or a placeholder
    /// while it is neither downloaded nor built: `run` puts the real base in its place.
    Base { path: PathBuf, format: DiskFormat },
    /// A stage disk kept by an earlier `--incremental` build.
    KeptStage(PathBuf),
}

/// A new overlay disk, resized to the recipe's size.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub backing: Backing,
    pub disk: PathBuf,
    /// `disk.size` of the recipe.
    pub size: Option<Size>,
    /// The base's virtual size, when known before the base is fetched.
    pub base_size: Option<u64>,
    /// The overlay is the stage disk `--incremental` keeps.
    pub stage: bool,
}

/// How big the overlay ends up, against its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// As big as the base.
    None,
    /// Resized to this many bytes.
    To(u64),
    /// Resized to a size known once the base is downloaded.
    Unknown(Size),
}

impl Overlay {
    /// The single growth decision of a build: what the disk grows to on a base of
    /// `base_size` bytes (`None`: not known yet). Refuses to shrink.
    pub fn growth(&self, base_size: Option<u64>) -> Result<Growth> {
        if matches!(self.backing, Backing::KeptStage(_)) {
            return Ok(Growth::None);
        }
        Ok(match (base_size, self.size) {
            (Some(b), size) => match super::resolve::target_size(size, b)? {
                t if t > b => Growth::To(t),
                _ => Growth::None,
            },
            (None, Some(size)) => Growth::Unknown(size),
            (None, None) => Growth::None,
        })
    }

    /// The growth `plan` shows.
    pub fn planned_growth(&self) -> Growth {
        self.growth(self.base_size).unwrap_or(Growth::None)
    }

    /// The commands on `base` (the fetched one; `None`: the one the plan knows).
    pub fn commands(&self, base: Option<&CachedBase>) -> Result<Vec<Cmd>> {
        let (backing, format) = match (&self.backing, base) {
            (Backing::KeptStage(p), _) => (p.as_path(), DiskFormat::Qcow2),
            (Backing::Base { .. }, Some(b)) => (b.path.as_path(), b.format),
            (Backing::Base { path, format }, None) => (path.as_path(), *format),
        };
        let growth = match base {
            Some(b) => self.growth(Some(b.virtual_size))?,
            None => self.planned_growth(),
        };
        let mut cmds = vec![qemu_img::create_overlay_cmd(backing, format, &self.disk)];
        match growth {
            Growth::None => {}
            Growth::To(t) => cmds.push(qemu_img::resize_cmd(&self.disk, t)),
            Growth::Unknown(size) => cmds.push(qemu_img::resize_placeholder_cmd(
                &self.disk,
                &format!("<{size} for the downloaded base>"),
            )),
        }
        Ok(cmds)
    }
}

/// Which customization parts an appliance launch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    /// Package installs and removals only (the stage `--incremental` keeps).
    Packages,
    /// Everything but packages (on a kept stage).
    Rest,
    /// Everything.
    All,
}

/// Whether an appliance launch grows the root partition and filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrowRoot {
    No,
    /// When the overlay was made bigger than the base: `partition` overrides the one
    /// holding `/`.
    IfResized {
        partition: Option<String>,
    },
}

/// One appliance launch.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub disk: PathBuf,
    pub parts: Parts,
    pub grow: GrowRoot,
    pub network: bool,
    pub sparsify: bool,
    pub relabel: Relabel,
    /// Copy the guest's package database here (the last launch, for the SBOM).
    pub packages_to: Option<PathBuf>,
    /// Mount `/boot` read-only: nothing in the launch writes there.
    pub protect_boot: bool,
    /// Fetch the ttyd binary here before the launch.
    pub ttyd_to: Option<PathBuf>,
    /// Report where the root filesystem lies (a `settle` step follows).
    pub locate_root: bool,
}

impl GuestSpec {
    /// The launch's own command line.
    pub fn command(&self) -> Cmd {
        Fish::launch_cmd(
            &[Drive {
                path: &self.disk,
                format: "qcow2",
                readonly: false,
            }],
            self.network,
        )
    }

    /// What the launch does, in order; `grows`: the overlay was made bigger.
    pub fn operations(&self, c: &Customization, grows: bool) -> Vec<String> {
        let mut ops = Vec::new();
        if let (GrowRoot::IfResized { partition }, true) = (&self.grow, grows) {
            ops.push(format!(
                "grow {} to the end of the disk, then its filesystem",
                partition.as_deref().unwrap_or("the partition holding /")
            ));
        }
        let parts = match self.parts {
            Parts::Packages => vec![&c.packages],
            Parts::Rest => vec![&c.main],
            Parts::All => vec![&c.packages, &c.main],
        };
        ops.extend(parts.iter().flat_map(|p| p.steps.iter().cloned()));
        ops.extend(self.relabel.operation());
        if self.sparsify {
            ops.push("zero free space".into());
        }
        ops
    }
}

/// Keeping the stage disk and putting the build's overlay on the kept copy.
#[derive(Debug, Clone)]
pub struct Stage {
    pub disk: PathBuf,
    pub kept: PathBuf,
    pub overlay: PathBuf,
}

impl Stage {
    pub fn command(&self) -> Cmd {
        qemu_img::create_overlay_cmd(&self.kept, DiskFormat::Qcow2, &self.overlay)
    }
}

/// Keeping the disk after the whole customization (the settled stage) for rebuilds that
/// change only files the host can rewrite. Runs no command: `disk` is linked (or copied)
/// into the cache, and finalize reads it next.
#[derive(Debug, Clone)]
pub struct Settle {
    pub disk: PathBuf,
    pub kept: PathBuf,
    /// The package stage `disk` is an overlay of.
    pub stage: PathBuf,
    /// The package database the launch copied out, kept beside the disk for the SBOM.
    pub packages: PathBuf,
}

/// Rewriting the files of [`Customization::patchable`] on an overlay of a settled disk,
/// on the host: no appliance.
#[derive(Debug, Clone)]
pub struct Patch {
    pub disk: PathBuf,
    pub settled: super::stages::Settled,
    /// The mount point of the root filesystem's export.
    pub mountpoint: PathBuf,
    /// Where the SBOM's inputs go (copied from the settled disk's).
    pub packages_to: PathBuf,
    /// Users the recipe appends to those of the settled disk, added on the host.
    pub added_users: Vec<AddedUser>,
}

/// A user a patch adds, as `plan` shows it.
#[derive(Debug, Clone)]
pub struct AddedUser {
    pub name: String,
    /// The recipe gives it SSH keys.
    pub keys: bool,
    /// It gets a sudoers file.
    pub sudo: bool,
}

impl Patch {
    pub fn command(&self) -> Cmd {
        crate::guest::patch::export_cmd(&self.disk, &self.settled.root, &self.mountpoint, true)
    }
}

/// Flattening the overlay into the finished disk.
#[derive(Debug, Clone)]
pub struct Finalize {
    pub from: PathBuf,
    pub disk: PathBuf,
    pub format: DiskFormat,
    pub compress: bool,
}

impl Finalize {
    /// Convert, check (qcow2), and `qemu-img info` last: its output describes the disk.
    pub fn commands(&self) -> Vec<Cmd> {
        let mut cmds = vec![qemu_img::convert_cmd(
            &self.from,
            &self.disk,
            self.format,
            self.compress,
        )];
        if self.format == DiskFormat::Qcow2 {
            cmds.push(qemu_img::check_cmd(&self.disk));
        }
        cmds.push(qemu_img::info_cmd(&self.disk));
        cmds
    }
}

/// The steps that make the disk, between the base and finalize.
#[derive(Debug, Clone)]
pub enum DiskStep {
    Overlay(Overlay),
    Guest(GuestSpec),
    /// Growth and packages come from the kept stage disk.
    KeptPackages,
    Stage(Stage),
    Settle(Settle),
    Patch(Patch),
}

/// What becomes of the finished disk.
#[derive(Debug, Clone)]
pub enum Deliver {
    /// `--disk-only`: the disk is written here.
    Disk(Keyed<PathBuf>),
    /// Packed into an image, written to every destination, attested.
    Image {
        pack: Keyed<Pack>,
        publish: Keyed<Publish>,
        attest: Keyed<Attest>,
    },
}

#[derive(Debug, Clone)]
pub struct Pack {
    pub disk_name: String,
    pub compression: &'static str,
}

#[derive(Debug, Clone)]
pub struct Publish {
    pub destinations: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Attest {
    /// Signs the pushed manifest digest and the provenance.
    pub signer: Option<std::sync::Arc<crate::provenance::PrivateKey>>,
}

/// One step of a plan as `plan` shows it: a view of the payload `run` executes.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    Base(&'a BaseAction),
    Disk(&'a DiskStep),
    Finalize(&'a Finalize),
    Deliver(DeliverStep<'a>),
}

/// The steps of [`Deliver`], one at a time.
#[derive(Debug, Clone, Copy)]
pub enum DeliverStep<'a> {
    Disk(&'a Path),
    Pack(&'a Pack),
    Publish(&'a Publish),
    Attest(&'a Attest),
}

/// What a step's description and operations need beyond the step.
pub struct Shown<'a> {
    pub key: &'a str,
    pub base_label: &'a str,
    pub customization: &'a Customization,
    /// The overlay grows the disk (as the plan knows it).
    pub grows: bool,
}

impl Step<'_> {
    /// The name in `plan`, `--json-events` and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Base(_) => "base",
            Step::Disk(DiskStep::Overlay(_)) => "overlay",
            Step::Disk(DiskStep::Guest(g)) if g.parts == Parts::Packages => "guest-packages",
            Step::Disk(DiskStep::Guest(_)) => "guest",
            Step::Disk(DiskStep::KeptPackages) => "guest-packages",
            Step::Disk(DiskStep::Stage(_)) => "stage",
            Step::Disk(DiskStep::Settle(_)) => "settle",
            Step::Disk(DiskStep::Patch(_)) => "patch",
            Step::Finalize(_) => "finalize",
            Step::Deliver(DeliverStep::Disk(_)) => "disk",
            Step::Deliver(DeliverStep::Pack(_)) => "pack",
            Step::Deliver(DeliverStep::Publish(_)) => "publish",
            Step::Deliver(DeliverStep::Attest(_)) => "attest",
        }
    }

    /// Nothing to do: the result is in the cache.
    pub fn cached(&self) -> bool {
        matches!(
            self,
            Step::Base(BaseAction::Cached(_)) | Step::Disk(DiskStep::KeptPackages)
        )
    }

    pub fn description(&self, s: &Shown<'_>) -> String {
        match self {
            Step::Base(BaseAction::Cached(c)) => {
                format!("base {} (cached, {})", s.base_label, c.digest)
            }
            Step::Base(BaseAction::Download { from }) => from.clone(),
            Step::Base(BaseAction::Build { name, .. }) => {
                format!("build base {name} from distribution packages (cached afterwards)")
            }
            Step::Disk(DiskStep::Overlay(o)) => match (&o.backing, o.stage) {
                (Backing::KeptStage(_), _) => {
                    format!("overlay on the kept stage disk {}", short(s.key))
                }
                (Backing::Base { .. }, true) => {
                    "stage disk on the cached base (never modified), resized".into()
                }
                (Backing::Base { .. }, false) => format!(
                    "overlay on the cached base (never modified){}",
                    match o.base_size.map(|b| o.size.map_or(b, |z| z.target(b))) {
                        Some(t) => format!(", resized to {}", crate::progress::human_bytes(t)),
                        None => String::new(),
                    }
                ),
            },
            Step::Disk(DiskStep::Guest(g)) => match g.parts {
                Parts::Packages => "one appliance launch: grow and install packages; the disk is kept for later builds".into(),
                Parts::Rest => "one appliance launch: users, files, commands, ttyd, desktop, hygiene".into(),
                Parts::All => "one appliance launch: grow, packages, customization, ttyd, desktop, hygiene".into(),
            },
            Step::Disk(DiskStep::KeptPackages) => format!(
                "grow and install packages: the kept stage disk {}",
                short(s.key)
            ),
            Step::Disk(DiskStep::Stage(_)) => {
                format!("keep the stage disk as {}", short(s.key))
            }
            Step::Disk(DiskStep::Settle(_)) => format!(
                "keep the customized disk as {} when a read-only check (qemu-storage-daemon, debugfs) shows the host can rewrite files on it: a rebuild that changes only {} rewrites them on the host",
                short(s.key),
                patchable_summary(s.customization)
            ),
            Step::Disk(DiskStep::Patch(p)) => format!(
                "no appliance: {}rewrite {} on the host (owner, mode and labels kept; the old content zeroed){}",
                match p.added_users.as_slice() {
                    [] => String::new(),
                    users => format!(
                        "add user{} {} as the guest's useradd -m would (account files and their backups, a home from /etc/skel, keys, sudoers), then ",
                        if users.len() == 1 { "" } else { "s" },
                        users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                },
                patchable_summary(s.customization),
                if s.customization.patchable.kept_passwords {
                    "; a build whose passwords changed since customizes in the appliance instead"
                } else {
                    ""
                }
            ),
            Step::Finalize(_) => "flatten into a standalone disk and check it".into(),
            Step::Deliver(DeliverStep::Disk(dest)) => {
                format!("write the disk to {}", dest.display())
            }
            Step::Deliver(DeliverStep::Pack(p)) => format!(
                "pack /disk/{} (107:107, 0440) into an OCI layer ({}), config and manifest",
                p.disk_name, p.compression
            ),
            Step::Deliver(DeliverStep::Publish(p)) => {
                format!("write {}", p.destinations.join(", "))
            }
            Step::Deliver(DeliverStep::Attest(a)) => format!(
                "attach an SPDX SBOM of the guest's packages and SLSA provenance{}",
                match &a.signer {
                    Some(k) => format!(", signed with key {}", k.public().fingerprint()),
                    None => String::new(),
                }
            ),
        }
    }

    /// The external commands the step runs on `base` (`None`: the base as the plan
    /// knows it), in order. Base builds and appliance launches: the launch the step
    /// starts (what it then does inside is [`Step::operations`]).
    pub fn commands_on(&self, base: Option<&CachedBase>) -> Result<Vec<Cmd>> {
        Ok(match self {
            Step::Base(BaseAction::Build { commands, .. }) => commands.clone(),
            Step::Base(_) => Vec::new(),
            Step::Disk(DiskStep::Overlay(o)) => o.commands(base)?,
            Step::Disk(DiskStep::Guest(g)) => vec![g.command()],
            Step::Disk(DiskStep::KeptPackages) => Vec::new(),
            Step::Disk(DiskStep::Stage(st)) => vec![st.command()],
            Step::Disk(DiskStep::Settle(_)) => Vec::new(),
            Step::Disk(DiskStep::Patch(p)) => vec![p.command()],
            Step::Finalize(f) => f.commands(),
            Step::Deliver(_) => Vec::new(),
        })
    }

    /// What the step does inside the appliance.
    pub fn operations(&self, s: &Shown<'_>) -> Vec<String> {
        match self {
            Step::Disk(DiskStep::Guest(g)) => g.operations(s.customization, s.grows),
            Step::Disk(DiskStep::Patch(p)) => {
                use crate::guest::patch::{PatchData, Presence};
                let patchable = &s.customization.patchable;
                let added = |name: &Option<String>| {
                    name.as_ref()
                        .is_some_and(|n| p.added_users.iter().any(|u| &u.name == n))
                };
                let mut ops: Vec<String> = p
                    .added_users
                    .iter()
                    .map(|u| {
                        let n = &u.name;
                        format!(
                            "add user {n}: /etc/passwd, group, shadow, gshadow and their backups, subuid and subgid where the guest has them; /home/{n} from /etc/skel{}{}",
                            if u.keys {
                                format!("; /home/{n}/.ssh/authorized_keys")
                            } else {
                                String::new()
                            },
                            if u.sudo {
                                format!("; /etc/sudoers.d/{n}")
                            } else {
                                String::new()
                            }
                        )
                    })
                    .collect();
                ops.extend(
                    patchable
                        .files
                        .iter()
                        .filter(|f| {
                            p.added_users.is_empty()
                                || !(added(&f.home_of)
                                    || matches!(
                                        f.data,
                                        PatchData::Passwords(_) | PatchData::BackupPasswords(_)
                                    ))
                        })
                        .map(|f| match f.presence {
                            Presence::Always => format!("rewrite {}", f.path),
                            Presence::IfPresent => {
                                format!("rewrite {} where the guest has it", f.path)
                            }
                        }),
                );
                ops
            }
            _ => Vec::new(),
        }
    }
}

/// The files a settled disk's rebuild rewrites, for descriptions: "/etc/motd and ttyd's
/// command line".
fn patchable_summary(c: &Customization) -> String {
    let p = &c.patchable;
    let mut parts: Vec<String> = Vec::new();
    if !p.user_keys.is_empty() || p.root_keys {
        parts.push("SSH keys".into());
    }
    // The recipe's files follow the users' keys, in recipe order.
    parts.extend(
        p.files
            .iter()
            .skip(p.user_keys.len())
            .take(p.recipe_files.len())
            .map(|f| f.path.clone()),
    );
    if p.passwords {
        parts.push("passwords".into());
    }
    if p.ttyd {
        parts.push("ttyd's command line and credential".into());
    }
    match parts.len() {
        0 => "nothing".into(),
        1 => parts.remove(0),
        _ => {
            let last = parts.pop().unwrap_or_default();
            format!("{} and {last}", parts.join(", "))
        }
    }
}

/// The first 12 hex digits of a key.
pub fn short(key: &str) -> &str {
    let h = key.trim_start_matches("sha256:");
    &h[..h.len().min(12)]
}
