//! What the cluster objects are generated from, its validation, and the pure values
//! derived from it (pinned image, tracked URL, volume size).

use anyhow::{bail, ensure, Context, Result};

use super::types::{PullMethod, ServiceType};

/// Polled once a night at 03:00 (the controller's clock) unless told otherwise.
pub const DEFAULT_SCHEDULE: &str = "0 3 * * *";
/// Guest memory when no instancetype sets it.
pub const DEFAULT_MEMORY: &str = "2Gi";

/// The ttyd Service is named NAME + this.
pub const SERVICE_SUFFIX: &str = "-ttyd";
/// The web desktop's (noVNC) Service is named NAME + this.
pub const DESKTOP_SERVICE_SUFFIX: &str = "-desktop";
/// The VM that boots from the DataSource is named NAME + this.
pub const PERSISTENT_SUFFIX: &str = "-persistent";
/// Names are DNS-1035 labels (at most 63 characters) with room for the longest suffix.
const MAX_NAME_LEN: usize = 63 - PERSISTENT_SUFFIX.len();

const GI: u128 = 1 << 30;
/// Added to the disk's virtual size before rounding the volume request up to whole Gi.
/// CDI refuses an import whose virtual size exceeds the space the importer can use
/// (`virtual image size … is larger than the reported available storage`). On Filesystem
/// volumes it adds its configured filesystem overhead to a `storage:` request (6% by
/// default, per storage class, and it may be set lower than what the filesystem really
/// takes: ext4 alone keeps 5% for root, which the unprivileged importer cannot use).
/// 10% of headroom keeps the import from failing on such classes; on Block volumes it is
/// only a little unused space at the end of the disk.
const HEADROOM_PERCENT: u128 = 10;

/// Everything the cluster objects for one image are generated from.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestInput {
    /// `HOST[:PORT]/REPO`, without tag or digest.
    pub repository: String,
    /// The tag the DataImportCron follows (a moving tag such as `latest`).
    pub tag: String,
    /// The manifest digest the VM boots (`sha256:…`).
    pub digest: String,
    /// Name of the VM, the DataImportCron and the DataSource.
    pub name: String,
    /// Namespace for every object; none leaves it to `kubectl -n`.
    pub namespace: Option<String>,
    /// The disk's virtual size in bytes (`qemu-img info`).
    pub disk_virtual_size: u64,
    pub instancetype: Option<TypeRef>,
    pub preference: Option<TypeRef>,
    /// Guest memory (a Kubernetes quantity) when there is no instancetype.
    pub memory: String,
    /// The port ttyd listens on in the guest; `Some` adds a Service for it.
    pub ttyd_port: Option<u16>,
    /// The port noVNC (the web desktop) listens on in the guest; `Some` adds a Service.
    pub desktop_port: Option<u16>,
    pub service_type: ServiceType,
    /// When CDI polls the tag for a new digest (standard five-field cron).
    pub schedule: String,
    /// Storage class for imported volumes; none uses the cluster's default.
    pub storage_class: Option<String>,
    /// How CDI pulls the image; `None` leaves CDI's default (`pod`) unwritten.
    pub pull_method: Option<PullMethod>,
    /// The architecture the DataImportCron imports when the tag names an index
    /// (`amd64`, `arm64`, …); `None` leaves the choice to CDI.
    pub architecture: Option<String>,
    /// How the VM boots.
    pub boot: BootFirmware,
    /// The Secret holding cloud-init user-data (key `userdata`) for a NoCloud volume.
    pub user_data_secret: Option<String>,
}

/// The firmware the VM boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootFirmware {
    /// Legacy BIOS: KubeVirt's default, nothing written.
    #[default]
    Bios,
    /// UEFI; with Secure Boot the VM also gets SMM.
    Efi { secure_boot: bool },
}

/// An instancetype or preference by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeRef {
    pub name: String,
    pub scope: Scope,
}

/// Whether an instancetype or preference is cluster-wide or lives in the VM's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    Cluster,
    Namespace,
}

impl TypeRef {
    /// A `VirtualMachineCluster…` reference, the usual kind (common-instancetypes).
    pub fn cluster(name: &str) -> TypeRef {
        TypeRef {
            name: name.to_string(),
            scope: Scope::Cluster,
        }
    }

    pub fn instancetype_kind(&self) -> &'static str {
        match self.scope {
            Scope::Cluster => "VirtualMachineClusterInstancetype",
            Scope::Namespace => "VirtualMachineInstancetype",
        }
    }

    pub fn preference_kind(&self) -> &'static str {
        match self.scope {
            Scope::Cluster => "VirtualMachineClusterPreference",
            Scope::Namespace => "VirtualMachinePreference",
        }
    }
}

impl ManifestInput {
    /// An input with the defaults: no namespace, instancetype, preference or ttyd,
    /// 2Gi of memory, a ClusterIP Service, a nightly schedule, the default storage class.
    pub fn new(
        repository: &str,
        tag: &str,
        digest: &str,
        name: &str,
        disk_virtual_size: u64,
    ) -> ManifestInput {
        ManifestInput {
            repository: repository.to_string(),
            tag: tag.to_string(),
            digest: digest.to_string(),
            name: name.to_string(),
            namespace: None,
            disk_virtual_size,
            instancetype: None,
            preference: None,
            memory: DEFAULT_MEMORY.to_string(),
            ttyd_port: None,
            desktop_port: None,
            service_type: ServiceType::default(),
            schedule: DEFAULT_SCHEDULE.to_string(),
            storage_class: None,
            pull_method: None,
            architecture: None,
            boot: BootFirmware::Bios,
            user_data_secret: None,
        }
    }

    /// Checks what the API servers would refuse, so a bad value fails at build time.
    pub fn validate(&self) -> Result<()> {
        check_repository(&self.repository)?;
        check_tag(&self.tag)?;
        check_digest(&self.digest)?;
        check_dns_label("name", &self.name, MAX_NAME_LEN)?;
        if let Some(ns) = &self.namespace {
            check_dns_label("namespace", ns, 63)?;
        }
        ensure!(self.disk_virtual_size > 0, "the disk's virtual size is 0");
        if self.instancetype.is_none() {
            check_quantity("memory", &self.memory)?;
        }
        for r in self.instancetype.iter().chain(&self.preference) {
            check_label_value("instancetype or preference", &r.name)?;
        }
        ensure!(self.ttyd_port != Some(0), "ttyd port 0 cannot be exposed");
        ensure!(
            self.desktop_port != Some(0),
            "desktop port 0 cannot be exposed"
        );
        ensure!(
            self.desktop_port.is_none() || self.desktop_port != self.ttyd_port,
            "the desktop and ttyd cannot share a port"
        );
        check_schedule(&self.schedule)?;
        if let Some(secret) = &self.user_data_secret {
            check_dns_label("user-data Secret", secret, 253)?;
        }
        if let Some(class) = &self.storage_class {
            ensure!(!class.trim().is_empty(), "empty storage class name");
        }
        if let Some(arch) = &self.architecture {
            ensure!(
                !arch.is_empty()
                    && arch
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
                "architecture `{arch}` is not an OCI architecture name such as amd64"
            );
        }
        Ok(())
    }
}

/// The image reference a VM boots: `HOST/REPO@sha256:…`, immune to the tag moving.
pub fn pinned_image(repository: &str, digest: &str) -> Result<String> {
    check_repository(repository)?;
    check_digest(digest)?;
    Ok(format!("{repository}@{digest}"))
}

/// The registry URL CDI polls: `docker://HOST/REPO:TAG`.
pub fn tracked_url(repository: &str, tag: &str) -> Result<String> {
    check_repository(repository)?;
    check_tag(tag)?;
    Ok(format!("docker://{repository}:{tag}"))
}

/// The volume request for a disk of `virtual_size` bytes: the size plus
/// [`HEADROOM_PERCENT`], rounded up to whole Gi (`5Gi`).
pub fn storage_request(virtual_size: u64) -> String {
    let size = u128::from(virtual_size);
    let with_headroom = size + (size * HEADROOM_PERCENT).div_ceil(100);
    format!("{}Gi", with_headroom.div_ceil(GI).max(1))
}

fn check_repository(repo: &str) -> Result<()> {
    let (host, path) = repo
        .split_once('/')
        .with_context(|| format!("image repository `{repo}` is not HOST/REPO"))?;
    ensure!(
        !host.is_empty() && !path.is_empty() && !repo.contains("://"),
        "image repository `{repo}` is not HOST/REPO"
    );
    ensure!(
        !path.contains(':') && !repo.contains('@'),
        "image repository `{repo}` must not carry a tag or digest"
    );
    ensure!(
        path.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c)),
        "image repository path `{path}` may only hold lowercase letters, digits and . _ - /"
    );
    Ok(())
}

fn check_tag(tag: &str) -> Result<()> {
    let valid = tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    ensure!(valid, "`{tag}` is not a valid image tag");
    Ok(())
}

fn check_digest(digest: &str) -> Result<()> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("digest `{digest}` is not sha256:…"))?;
    ensure!(
        hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "digest `{digest}` is not sha256 followed by 64 lowercase hex digits"
    );
    Ok(())
}

/// A DNS-1035 label: what Services, DataImportCrons and their DataSources must be named.
fn check_dns_label(what: &str, value: &str, max: usize) -> Result<()> {
    let valid = value.len() <= max
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && !value.ends_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "{what} `{value}` must be at most {max} characters of lowercase letters, digits \
             and '-', starting with a letter and not ending with '-'"
        );
    }
    Ok(())
}

/// Instancetype and preference names also travel as label values (CDI's
/// `instancetype.kubevirt.io/default-*` labels): at most 63 of `A-Za-z0-9-_.`, starting
/// and ending alphanumeric.
fn check_label_value(what: &str, value: &str) -> Result<()> {
    let valid = (1..=63).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    ensure!(
        valid,
        "{what} name `{value}` is not a valid Kubernetes label value"
    );
    Ok(())
}

/// A Kubernetes quantity as people write memory: `2Gi`, `512Mi`, `1G`.
fn check_quantity(what: &str, value: &str) -> Result<()> {
    let number = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &value[number.len()..];
    let suffixes = [
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
    ];
    let valid = !number.is_empty()
        && number.parse::<f64>().is_ok_and(|n| n > 0.0)
        && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        && suffixes.contains(&suffix);
    ensure!(
        valid,
        "{what} `{value}` is not a Kubernetes quantity such as 2Gi"
    );
    Ok(())
}

/// CDI parses the schedule as a standard cron line: five fields or a `@` descriptor.
fn check_schedule(schedule: &str) -> Result<()> {
    let descriptors = [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    let valid = descriptors.contains(&schedule.trim())
        || (fields.len() == 5
            && fields.iter().all(|f| {
                f.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "*/,-?".contains(c))
            }));
    ensure!(
        valid,
        "schedule `{schedule}` is not a five-field cron line (such as `0 3 * * *`) or @daily"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn pinned_image_uses_the_digest_not_the_tag() {
        assert_eq!(
            pinned_image("registry.example.com:5000/lab/ubuntu", DIGEST).unwrap(),
            format!("registry.example.com:5000/lab/ubuntu@{DIGEST}")
        );
        assert!(pinned_image("registry.example.com/lab/ubuntu:1.0", DIGEST).is_err());
        assert!(pinned_image("registry.example.com/lab/ubuntu", "sha256:abc").is_err());
        assert!(pinned_image("registry.example.com/lab/ubuntu", &DIGEST.to_uppercase()).is_err());
        assert!(pinned_image("ubuntu", DIGEST).is_err());
    }

    #[test]
    fn tracked_url_follows_the_tag() {
        assert_eq!(
            tracked_url("127.0.0.1:5000/lab/demo", "latest").unwrap(),
            "docker://127.0.0.1:5000/lab/demo:latest"
        );
        assert!(tracked_url("127.0.0.1:5000/lab/demo", "-bad").is_err());
        assert!(tracked_url("docker://127.0.0.1:5000/lab/demo", "latest").is_err());
    }

    #[test]
    fn storage_request_adds_headroom_and_rounds_up_to_gi() {
        const G: u64 = 1 << 30;
        assert_eq!(storage_request(1), "1Gi");
        assert_eq!(storage_request(512 << 20), "1Gi");
        // 4 GiB + 10% = 4.4 GiB.
        assert_eq!(storage_request(4 * G), "5Gi");
        // Exactly 10 GiB with headroom is 11 GiB: no extra Gi from rounding.
        assert_eq!(storage_request(10 * G), "11Gi");
        assert_eq!(storage_request(10 * G + 1), "12Gi");
        assert_eq!(storage_request(20 * G), "22Gi");
        // The request always covers the virtual size with at least 10% to spare.
        for size in [1, G - 1, G, 3 * G + 7, 40 * G, u64::MAX] {
            let gi: u128 = storage_request(size)
                .trim_end_matches("Gi")
                .parse()
                .unwrap();
            assert!(gi * GI >= u128::from(size) * 11 / 10, "{size}");
        }
    }

    #[test]
    fn validation_names_the_bad_value() {
        let good = ManifestInput::new("r.example/lab/x", "latest", DIGEST, "lab-vm", 1 << 30);
        good.validate().unwrap();
        type Change = Box<dyn Fn(&mut ManifestInput)>;
        let cases: Vec<(&str, Change)> = vec![
            ("`Lab`", Box::new(|i| i.name = "Lab".into())),
            ("`9lab`", Box::new(|i| i.name = "9lab".into())),
            ("at most 52", Box::new(|i| i.name = "a".repeat(53))),
            (
                "namespace `a_b`",
                Box::new(|i| i.namespace = Some("a_b".into())),
            ),
            ("virtual size is 0", Box::new(|i| i.disk_virtual_size = 0)),
            ("memory `2 GB`", Box::new(|i| i.memory = "2 GB".into())),
            (
                "schedule `nightly`",
                Box::new(|i| i.schedule = "nightly".into()),
            ),
            ("ttyd port 0", Box::new(|i| i.ttyd_port = Some(0))),
            (
                "tag",
                Box::new(|i| i.repository = "r.example/lab/x:1".into()),
            ),
            (
                "name `u1 small`",
                Box::new(|i| i.preference = Some(TypeRef::cluster("u1 small"))),
            ),
        ];
        for (needle, change) in cases {
            let mut input = good.clone();
            change(&mut input);
            let err = format!("{:#}", input.validate().unwrap_err());
            assert!(err.contains(needle), "{needle}: {err}");
        }
        // Memory is not checked when an instancetype decides it.
        let mut typed = good.clone();
        typed.memory = String::new();
        typed.instancetype = Some(TypeRef::cluster("u1.small"));
        typed.validate().unwrap();
        for ok in ["@daily", "*/30 2 * * MON-FRI", "0 0 1 * *"] {
            let mut input = good.clone();
            input.schedule = ok.into();
            input.validate().unwrap();
        }
    }
}
