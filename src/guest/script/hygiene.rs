//! Golden-image hygiene: what one build of an image must not hand to every VM made
//! from it (machine-id, SSH host keys, package caches, logs, cloud-init state, random
//! seeds, LVM's devices file).

use super::{Part, StageData};
use crate::recipe::Hygiene;

pub fn apply(g: &mut Part, h: &Hygiene) {
    if h.package_cache {
        g.step("hygiene: package caches");
        g.line("case \"$(pkgmgr)\" in apt) apt-get clean; rm -rf /var/lib/apt/lists/* ;; dnf) dnf clean all -q ;; yum) yum clean all -q ;; zypper) zypper --non-interactive clean -a ;; apk) rm -rf /var/cache/apk/* ;; esac");
    }
    if h.cloud_init {
        g.step("hygiene: cloud-init state");
        g.line("if have cloud-init; then cloud-init clean --logs >/dev/null 2>&1 || true; fi; rm -rf /var/lib/cloud/instances /var/lib/cloud/instance /var/lib/cloud/data /var/lib/cloud/sem");
    }
    if h.ssh_host_keys {
        g.step("hygiene: SSH host keys");
        g.line("rm -f /etc/ssh/ssh_host_*");
        // Without cloud-init nothing would recreate them on Debian: a oneshot unit does
        // (an OpenRC service before sshd on guests whose init is OpenRC).
        let u = g.stage(
            "diskforge-ssh-hostkeys.service".into(),
            StageData::Bytes(include_str!("diskforge-ssh-hostkeys.service").into()),
            0o644,
        );
        let o = g.stage(
            "diskforge-ssh-hostkeys.openrc".into(),
            StageData::Bytes(include_str!("diskforge-ssh-hostkeys.openrc").into()),
            0o755,
        );
        g.line("if [ -d /etc/ssh ] && have ssh-keygen; then");
        g.line(format!(
            "  case \"$(guest_init)\" in systemd) install -m 0644 {u} /etc/systemd/system/diskforge-ssh-hostkeys.service; systemctl enable diskforge-ssh-hostkeys.service ;; openrc) install -m 0755 {o} /etc/init.d/diskforge-ssh-hostkeys; rc-update add diskforge-ssh-hostkeys default ;; esac"
        ));
        g.line("fi");
    }
    if h.logs {
        g.step("hygiene: logs");
        g.line("find /var/log -type f -exec truncate -s 0 {} + 2>/dev/null || true; rm -f /root/.bash_history /var/log/*.gz /var/log/*.[0-9]");
    }
    if h.random_seed {
        g.step("hygiene: random seeds");
        g.line("rm -f /var/lib/systemd/random-seed /var/lib/urandom/random-seed");
    }
    if h.lvm_devices {
        g.step("hygiene: LVM devices file");
        g.line("rm -f /etc/lvm/devices/system.devices");
    }
    if h.machine_id {
        g.step("hygiene: machine-id");
        g.line("if [ -e /etc/machine-id ]; then : > /etc/machine-id; fi; if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then rm -f /var/lib/dbus/machine-id; fi");
    }
}
