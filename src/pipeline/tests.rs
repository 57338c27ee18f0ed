//! Plans of small recipes on a real local base (made with `qemu-img`): the steps a plan
//! holds, and that what `plan --json` lists is what `run` executes for each step.

use std::path::PathBuf;
use std::process::Command;

use super::step::DiskStep;
use super::*;

const GIB: u64 = 1 << 30;

struct Fixture {
    dir: tempfile::TempDir,
    env: BuildEnv,
}

impl Fixture {
    /// A directory with a 1 GiB qcow2 base and an empty cache.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let made = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(dir.path().join("base.qcow2"))
            .arg("1G")
            .status()
            .expect("qemu-img");
        assert!(made.success());
        let env = BuildEnv {
            cache: Cache::open(Some(&dir.path().join("cache"))).unwrap(),
            accel: accel::Accel::Tcg,
            offline: true,
            work_root: None,
            keep_work: false,
            registry: RegistryOptions::default(),
            clients: Default::default(),
        };
        Fixture { dir, env }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn plan(&self, recipe: &str, opts: &BuildOptions) -> Plan {
        let path = self.dir.path().join("r.yaml");
        std::fs::write(&path, recipe).unwrap();
        let resolved = resolve::resolve(&path, opts, &self.env).unwrap();
        Plan::new(resolved, opts, &self.env, &self.work(), None).unwrap()
    }
}

fn names(plan: &Plan) -> Vec<&'static str> {
    plan.steps().iter().map(|(_, s)| s.name()).collect()
}

/// The base a build of `plan` runs on: the local file, as resolve found it.
fn base_of(plan: &Plan) -> CachedBase {
    plan.resolved.base.cached().expect("a local base").clone()
}

/// Each step's commands as `plan --json` lists them and as `run` executes them on the
/// fetched base.
/// (step, command line) pairs.
type Commands = Vec<(String, String)>;

fn planned_and_executed(plan: &Plan) -> (Commands, Commands) {
    let json = plan.to_json();
    let planned = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            let name = s["step"].as_str().unwrap().to_string();
            s["commands"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |c| (name.clone(), c.as_str().unwrap().to_string()))
        })
        .collect();
    let base = base_of(plan);
    let executed = plan
        .steps()
        .iter()
        .flat_map(|(_, s)| {
            plan.commands_of(*s, Some(&base))
                .unwrap()
                .into_iter()
                .map(|c| (s.name().to_string(), c.display()))
        })
        .collect();
    (planned, executed)
}

fn overlay(plan: &Plan) -> &step::Overlay {
    plan.disk
        .iter()
        .find_map(|s| match &s.step {
            DiskStep::Overlay(o) => Some(o),
            _ => None,
        })
        .expect("an overlay step")
}

fn operations(plan: &Plan, name: &str) -> Vec<String> {
    plan.shown()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} step"))
        .operations
}

#[test]
fn a_recipe_without_growth_overlays_the_base_as_it_is() {
    let f = Fixture::new();
    let plan = f.plan(
        "name: t\nbase: {path: base.qcow2}\n",
        &BuildOptions::default(),
    );
    assert_eq!(
        names(&plan),
        ["base", "overlay", "guest", "finalize", "pack", "publish", "attest"]
    );
    assert!(matches!(plan.base.step, BaseAction::Cached(_)));
    assert_eq!(overlay(&plan).planned_growth(), Growth::None);
    let json = plan.to_json();
    let overlay_cmds = json["steps"][1]["commands"].as_array().unwrap();
    assert_eq!(overlay_cmds.len(), 1, "{json:#}");
    assert!(overlay_cmds[0].as_str().unwrap().contains(" create "));
    assert!(!operations(&plan, "guest")
        .iter()
        .any(|o| o.starts_with("grow ")));
    let (planned, executed) = planned_and_executed(&plan);
    assert_eq!(planned, executed);
}

#[test]
fn a_recipe_with_growth_resizes_once_and_grows_in_the_guest() {
    let f = Fixture::new();
    let plan = f.plan(
        "name: t\nbase: {path: base.qcow2}\ndisk: {size: 2G}\n",
        &BuildOptions::default(),
    );
    assert_eq!(overlay(&plan).planned_growth(), Growth::To(2 * GIB));
    let (planned, executed) = planned_and_executed(&plan);
    assert_eq!(planned, executed);
    let overlay_cmds: Vec<&str> = planned
        .iter()
        .filter(|(s, _)| s == "overlay")
        .map(|(_, c)| c.as_str())
        .collect();
    assert_eq!(overlay_cmds.len(), 2, "{planned:#?}");
    assert!(
        overlay_cmds[1].contains("resize") && overlay_cmds[1].ends_with(&(2 * GIB).to_string())
    );
    assert!(operations(&plan, "guest")[0].starts_with("grow the partition holding /"));
    // The same decision on a base that turns out bigger than the recipe's size.
    let bigger = CachedBase {
        virtual_size: 3 * GIB,
        ..base_of(&plan)
    };
    let e = overlay(&plan).commands(Some(&bigger)).unwrap_err();
    assert!(e.to_string().contains("the disk cannot shrink"), "{e:#}");
}

#[test]
fn a_shrinking_disk_is_refused_when_the_plan_is_made() {
    let f = Fixture::new();
    let path = f.dir.path().join("r.yaml");
    std::fs::write(
        &path,
        "name: t\nbase: {path: base.qcow2}\ndisk: {size: 512M}\n",
    )
    .unwrap();
    let e = resolve::resolve(&path, &BuildOptions::default(), &f.env).unwrap_err();
    assert!(
        format!("{e:#}").contains("disk.size: the disk cannot shrink"),
        "{e:#}"
    );
}

#[test]
fn disk_only_ends_with_the_disk_and_publishes_nothing() {
    let f = Fixture::new();
    let dest = f.dir.path().join("out.qcow2");
    let plan = f.plan(
        "name: t\nbase: {path: base.qcow2}\n",
        &BuildOptions {
            disk_only: Some(dest.clone()),
            ..Default::default()
        },
    );
    assert_eq!(
        names(&plan),
        ["base", "overlay", "guest", "finalize", "disk"]
    );
    match &plan.deliver {
        Deliver::Disk(d) => assert_eq!(d.step, dest),
        Deliver::Image { .. } => panic!("a --disk-only plan publishes"),
    }
}

#[test]
fn incremental_keeps_the_stage_then_starts_from_it() {
    let f = Fixture::new();
    let recipe =
        "name: t\nbase: {path: base.qcow2}\ndisk: {size: 2G}\ncustomize:\n  packages: [curl]\n";
    let opts = BuildOptions {
        incremental: true,
        ..Default::default()
    };
    let first = f.plan(recipe, &opts);
    assert_eq!(
        names(&first),
        [
            "base",
            "overlay",
            "guest-packages",
            "stage",
            "guest",
            "finalize",
            "pack",
            "publish",
            "attest"
        ]
    );
    // The packages launch grows and has a network; the last one does neither.
    let launches: Vec<&step::GuestSpec> = first
        .disk
        .iter()
        .filter_map(|s| match &s.step {
            DiskStep::Guest(g) => Some(g),
            _ => None,
        })
        .collect();
    assert!(launches[0].network && !launches[1].network);
    assert!(operations(&first, "guest-packages")[0].starts_with("grow "));
    assert!(!operations(&first, "guest")
        .iter()
        .any(|o| o.starts_with("grow ")));
    let (planned, executed) = planned_and_executed(&first);
    assert_eq!(planned, executed);

    // Keep a stage disk where the first build would have, and plan again.
    let kept = first
        .disk
        .iter()
        .find_map(|s| match &s.step {
            DiskStep::Stage(st) => Some(st.kept.clone()),
            _ => None,
        })
        .unwrap();
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(f.dir.path().join("base.qcow2"))
        .arg(&kept)
        .status()
        .unwrap();
    assert!(made.success());
    let again = f.plan(recipe, &opts);
    assert_eq!(
        names(&again),
        [
            "base",
            "guest-packages",
            "overlay",
            "guest",
            "finalize",
            "pack",
            "publish",
            "attest"
        ]
    );
    let shown = again.shown();
    assert!(shown[1].cached && shown[1].commands.is_empty());
    let (planned, executed) = planned_and_executed(&again);
    assert_eq!(planned, executed);
    assert!(
        planned[0].1.contains(&format!(
            "-b $CACHE/stages/{}",
            kept.file_name().unwrap().to_string_lossy()
        )),
        "the overlay sits on the kept stage: {planned:#?}"
    );
    assert_eq!(again.build_key, first.build_key);
}

#[test]
fn publishing_steps_follow_the_destinations() {
    let f = Fixture::new();
    let plan = f.plan(
        "name: t\nbase: {path: base.qcow2}\n",
        &BuildOptions {
            outputs: vec!["oci:a:1".into(), "oci-archive:b.tar:2".into()],
            ..Default::default()
        },
    );
    let shown = plan.shown();
    let publish = shown.iter().find(|s| s.name == "publish").unwrap();
    assert_eq!(publish.description, "write oci:a:1, oci-archive:b.tar:2");
    // Every key after the base is chained: pack, publish and attest share the image key.
    let keys: Vec<&str> = shown.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys[4], plan.build_key);
    assert_eq!(keys[5], keys[4]);
    assert_ne!(keys[0], keys[1]);
}

#[test]
fn the_settled_key_leaves_out_only_what_the_host_rewrites() {
    let f = Fixture::new();
    std::fs::write(f.dir.path().join("notes.txt"), "first\n").unwrap();
    let recipe = |motd: &str, mode: &str, port: u16, user: &str, extra: &str| {
        format!(
            "name: t\nbase: {{path: base.qcow2}}\ncustomize:\n  files:\n    - {{path: /etc/motd, content: {motd}, mode: \"{mode}\"}}\n    - {{path: /srv/notes.txt, source: notes.txt}}\n{extra}ttyd: {{enabled: true, source: {{package: ttyd}}, port: {port}, credential: {{user: {user}, password: {{env: T_PW}}}}}}\n"
        )
    };
    let key = |text: &str| {
        let plan = f.plan(text, &BuildOptions::default());
        settled_key(
            &plan.resolved,
            &plan.customization,
            "sha256:prev",
            plan.resolved.loaded.recipe.customize.users.len(),
        )
        .unwrap()
    };
    let first = key(&recipe("hi", "0644", 7681, "web", ""));
    assert!(first.is_some());
    // Content, ttyd's command line and its credential's user: the same disk otherwise.
    assert_eq!(key(&recipe("changed", "0644", 7681, "web", "")), first);
    assert_eq!(key(&recipe("hi", "0644", 7682, "web", "")), first);
    assert_eq!(key(&recipe("hi", "0644", 7681, "admin", "")), first);
    std::fs::write(f.dir.path().join("notes.txt"), "second\n").unwrap();
    assert_eq!(key(&recipe("hi", "0644", 7681, "web", "")), first);
    // Anything else is a different disk.
    assert_ne!(key(&recipe("hi", "0600", 7681, "web", "")), first);
    assert_ne!(
        key(&recipe(
            "hi",
            "0644",
            7681,
            "web",
            "  users: [{name: lab}]\n"
        )),
        first
    );
    assert_ne!(
        key(&recipe("hi", "0644", 7681, "web", "  hostname: other\n")),
        first
    );
    // With commands (which may read any file), a file's content is an input again.
    let with_commands = "  commands: [\"cat /etc/motd > /var/tmp/copy\"]\n";
    assert_ne!(
        key(&recipe("hi", "0644", 7681, "web", with_commands)),
        key(&recipe("changed", "0644", 7681, "web", with_commands))
    );
    assert_eq!(
        key(&recipe("hi", "0644", 7681, "web", with_commands)),
        key(&recipe("hi", "0644", 7682, "web", with_commands)),
        "ttyd's files stay rewritable with commands"
    );
    // Nothing rewritable: no settled disk.
    assert_eq!(
        key("name: t\nbase: {path: base.qcow2}\ncustomize:\n  users: [{name: lab}]\n"),
        None
    );
}

/// A qcow2 overlay `to` of `backing`.
fn qcow2_over(backing: &std::path::Path, to: &std::path::Path) {
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(backing)
        .arg(to)
        .status()
        .unwrap();
    assert!(made.success());
}

/// A kept customized disk is found only on the package stage it stands on and with the
/// passwords it was kept with (a plan, which reads none, finds it), is left alone by a
/// build that would keep the same one, and goes when its package stage is replaced.
#[test]
fn a_settled_disk_is_reused_only_on_its_stage_and_with_its_passwords() {
    let f = Fixture::new();
    let cache = &f.env.cache;
    let stage = stages::path(cache, "sha256:1111").unwrap();
    qcow2_over(&f.dir.path().join("base.qcow2"), &stage);
    let work_disk = f.dir.path().join("customized.qcow2");
    qcow2_over(&stage, &work_disk);
    let packages = f.dir.path().join("packages");
    std::fs::create_dir(&packages).unwrap();
    std::fs::write(packages.join("dpkg-status"), "Package: x\n").unwrap();
    let root = crate::guest::patch::RootFs {
        offset: 1 << 20,
        size: 1 << 30,
        fs_type: "ext4".into(),
        other_mounts: vec![],
    };
    let key = "sha256:2222";
    let kept = stages::path(cache, key).unwrap();
    let pw = |s: &str| crate::recipe::SecretValue::new(s.into());
    let store = || {
        stages::store_settled(
            &work_disk,
            &kept,
            key,
            stages::Found {
                root: root.clone(),
                accounts: None,
            },
            &stage,
            &pw("one"),
            &packages,
        )
        .unwrap()
    };
    store();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o400
    );
    let found = |secrets: Option<&str>| {
        stages::lookup_settled(cache, key, &stage, secrets.map(pw).as_ref())
            .unwrap()
            .map(|s| {
                (
                    s.root,
                    std::fs::read_to_string(s.packages.join("dpkg-status")).unwrap(),
                )
            })
    };
    assert_eq!(
        found(Some("one")),
        Some((root.clone(), "Package: x\n".into()))
    );
    assert!(found(None).is_some(), "a plan does not find it");
    assert_eq!(found(Some("two")), None, "another password reused it");
    assert!(kept.is_file(), "a build with another password removed it");
    // The same disk kept again (another build of the same key): the first stays.
    let inode =
        |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = inode(&kept);
    store();
    assert_eq!(inode(&kept), before);
    // On another stage it is not found, and is removed.
    let other = stages::path(cache, "sha256:3333").unwrap();
    qcow2_over(&f.dir.path().join("base.qcow2"), &other);
    assert!(stages::lookup_settled(cache, key, &other, None)
        .unwrap()
        .is_none());
    assert!(!kept.exists());
    // Kept again, then its package stage is replaced: it goes with it.
    store();
    assert!(kept.is_file());
    let rebuilt = f.dir.path().join("rebuilt.qcow2");
    qcow2_over(&f.dir.path().join("base.qcow2"), &rebuilt);
    stages::store(&rebuilt, &stage, "sha256:1111").unwrap();
    assert!(!kept.exists() && !kept.with_extension("d").exists());
}

/// A disk kept by a build before users were appended to the recipe is found for the
/// longer recipe (the host adds the rest), only when its record says the host can, none
/// of the new users is on it, and nothing after the users depends on them.
#[test]
fn a_disk_kept_before_users_were_appended_serves_the_longer_recipe() {
    let f = Fixture::new();
    let cache = &f.env.cache;
    let stage = stages::path(cache, "sha256:1111").unwrap();
    qcow2_over(&f.dir.path().join("base.qcow2"), &stage);
    let recipe = |users: &str, extra: &str| {
        format!(
            "name: t\nbase: {{path: base.qcow2}}\ncustomize:\n  files: [{{path: /etc/motd, content: hi}}]\n  users: [{users}]\n{extra}"
        )
    };
    let key_of = |text: &str| {
        let plan = f.plan(text, &BuildOptions::default());
        let users = plan.resolved.loaded.recipe.customize.users.len();
        settled_key(&plan.resolved, &plan.customization, "sha256:prev", users)
            .unwrap()
            .unwrap()
    };
    let key = key_of(&recipe("{name: lab}", ""));
    let keep_as = |key: &str, accounts: Option<crate::guest::accounts::KeptAccounts>| {
        let work_disk = f.dir.path().join("customized.qcow2");
        let _ = std::fs::remove_file(&work_disk);
        qcow2_over(&stage, &work_disk);
        let kept = stages::path(cache, key).unwrap();
        stages::forget(&kept);
        stages::store_settled(
            &work_disk,
            &kept,
            key,
            stages::Found {
                root: crate::guest::patch::RootFs {
                    offset: 0,
                    size: 1 << 30,
                    fs_type: "ext4".into(),
                    other_mounts: vec![],
                },
                accounts,
            },
            &stage,
            &crate::recipe::SecretValue::new(String::new()),
            &f.dir.path().join("no-packages"),
        )
        .unwrap();
    };
    let keep = |accounts| keep_as(&key, accounts);
    let accounts = |users: &[&str]| crate::guest::accounts::KeptAccounts {
        users: users.iter().map(|u| u.to_string()).collect(),
        groups: vec!["root".into(), "lab".into()],
        uids: vec![0, 1000],
        model: crate::guest::accounts::MODEL,
        ..Default::default()
    };
    let found = |text: &str| {
        let plan = f.plan(text, &BuildOptions::default());
        settled_with_fewer_users(
            cache,
            &plan.resolved,
            &plan.customization,
            "sha256:prev",
            &stage,
            None,
        )
        .unwrap()
        .map(|(_, k, kept)| (k, kept))
    };
    let two = recipe("{name: lab}, {name: guest, sudo: true}", "");
    keep(Some(accounts(&["root", "lab"])));
    assert_eq!(found(&two), Some((key.clone(), 1)));
    // Two appended: the same disk, two to add.
    let three = recipe("{name: lab}, {name: guest}, {name: ops}", "");
    assert_eq!(found(&three), Some((key.clone(), 1)));
    // The first user changed: not the disk's recipe.
    assert_eq!(
        found(&recipe("{name: lab, sudo: true}, {name: guest}", "")),
        None
    );
    // A name already on the disk (the script would usermod it), a group that is not
    // there, a taken UID, a shell useradd refuses, a home already there.
    keep(Some(accounts(&["root", "lab", "guest"])));
    assert_eq!(found(&two), None);
    keep(Some(accounts(&["root", "lab"])));
    for user in [
        "{name: guest, groups: [wheel]}",
        "{name: guest, uid: 0}",
        "{name: guest, shell: bash}",
        "{name: lab2, shell: \"/bin/sh:x\"}",
    ] {
        let text = recipe(&format!("{{name: lab}}, {user}"), "");
        assert_eq!(found(&text), None, "{user}");
    }
    assert!(found(&recipe(
        "{name: lab}, {name: guest, groups: [lab], uid: 1500}",
        ""
    ))
    .is_some());
    keep(Some(crate::guest::accounts::KeptAccounts {
        homes: vec!["guest".into()],
        ..accounts(&["root", "lab"])
    }));
    assert_eq!(found(&two), None);
    // The first user of a recipe that had none.
    let none = key_of(&recipe("", ""));
    keep_as(
        &none,
        Some(crate::guest::accounts::KeptAccounts {
            groups: vec!["root".into()],
            ..accounts(&["root"])
        }),
    );
    let first = f.plan(&recipe("{name: lab}", ""), &BuildOptions::default());
    let hit = settled_with_fewer_users(
        cache,
        &first.resolved,
        &first.customization,
        "sha256:prev",
        &stage,
        None,
    )
    .unwrap()
    .map(|(_, k, kept)| (k, kept));
    assert_eq!(hit, Some((none, 0)));
    // A disk whose guest the host cannot follow, or checked for another model.
    keep(None);
    assert_eq!(found(&two), None);
    keep(Some(crate::guest::accounts::KeptAccounts {
        model: 0,
        ..accounts(&["root", "lab"])
    }));
    assert_eq!(found(&two), None);
    // What goes where useradd reads, or keeps useradd's log entries, rules it out
    // (each with a disk kept for its own shorter recipe).
    for (extra, appendable) in [
        ("  directories: [{path: /srv/data}]\n", true),
        ("  directories: [{path: /etc/skel/.config}]\n", false),
        ("  symlinks: [{path: /home/shared, target: /srv}]\n", false),
        ("hygiene: {logs: false}\n", false),
        (
            "desktop: {enabled: true, user: lab, credential: {env: D_PW}}\n",
            false,
        ),
    ] {
        let shorter = key_of(&recipe("{name: lab}", extra));
        keep_as(&shorter, Some(accounts(&["root", "lab"])));
        let found = found(&recipe("{name: lab}, {name: guest}", extra));
        assert_eq!(found.is_some(), appendable, "{extra}");
    }
}
