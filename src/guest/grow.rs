//! Growing the root partition and filesystem in place: a pure plan from what the
//! appliance reported (partition table, disk size, filesystem, LVM), then the operations
//! that carry it out.
//!
//! "The last partition" means the one that ends last on the disk, not the one with the
//! highest number: Ubuntu's and Debian's cloud images put partitions 14–16 at the front
//! and the root partition 1 at the end. The partition keeps its number, type GUID,
//! unique GUID (PARTUUID), name and attribute bits; only its end moves.

use anyhow::{bail, Context, Result};

pub use super::fish::{Partition, Table};

/// What holds the root filesystem and how to grow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsKind {
    Ext,
    Xfs,
    Btrfs,
}

impl FsKind {
    pub fn parse(vfs_type: &str) -> Result<FsKind> {
        match vfs_type {
            "ext2" | "ext3" | "ext4" => Ok(FsKind::Ext),
            "xfs" => Ok(FsKind::Xfs),
            "btrfs" => Ok(FsKind::Btrfs),
            other => bail!(
                "growing a {other} filesystem is not supported (ext2/3/4, xfs and btrfs are); set disk.grow.enabled: false"
            ),
        }
    }
}

/// Everything the plan is made from, as read in the appliance.
#[derive(Debug, Clone)]
pub struct GrowInput<'a> {
    /// The whole disk (`/dev/sda`).
    pub disk: &'a str,
    /// The partition to grow (`/dev/sda1`, or the LVM PV under the root LV).
    pub partition: &'a str,
    pub partnum: u32,
    pub table: Table,
    pub partitions: &'a [Partition],
    /// The last sector the partition may end at: on GPT the last usable LBA the primary
    /// header records once the backup header sits at the new end of the disk
    /// ([`super::fish::Fish::expand_gpt`], run before planning); on MBR the disk's last
    /// sector.
    pub last_sector: u64,
    /// The root filesystem's device (the LV when on LVM).
    pub root_device: &'a str,
    pub lvm: bool,
    pub fs: FsKind,
}

/// One step of growing, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Move the end of partition `num` to `end_sector` (inclusive).
    ResizePartition {
        disk: String,
        num: u32,
        end_sector: u64,
    },
    PvResize {
        pv: String,
    },
    LvExtendFree {
        lv: String,
    },
    /// Offline ext2/3/4: check then grow.
    ResizeExt {
        device: String,
    },
    /// Online: the filesystem is mounted at `/` for these.
    GrowXfs,
    GrowBtrfs,
}

const SECTOR: u64 = 512;

/// Plans the growth of `input.partition` to `input.last_sector`: exactly the operations
/// that run, in order.
pub fn plan_grow(input: &GrowInput<'_>) -> Result<Vec<Op>> {
    let part = input
        .partitions
        .iter()
        .find(|p| p.num == input.partnum)
        .with_context(|| {
            format!(
                "partition {} of {} is not in its partition table",
                input.partnum, input.disk
            )
        })?;
    if let Some(after) = input
        .partitions
        .iter()
        .filter(|p| p.num != part.num && p.start > part.start)
        .min_by_key(|p| p.start)
    {
        bail!(
            "{} cannot grow in place: partition {} of {} lies after it on the disk (bytes {}..{}); \
             move the root partition to the end of the disk or set disk.grow.enabled: false",
            input.partition,
            after.num,
            input.disk,
            after.start,
            after.end
        );
    }
    if input.table == Table::Mbr && part.num > 4 {
        bail!(
            "{} is a logical partition: growing it in place is not supported",
            input.partition
        );
    }
    let current_end = part.end / SECTOR;
    if input.last_sector <= current_end {
        bail!(
            "{} already ends at sector {current_end} of {} (the last it may use is {}): nothing to grow",
            input.partition,
            input.disk,
            input.last_sector
        );
    }
    let mut ops = vec![Op::ResizePartition {
        disk: input.disk.to_string(),
        num: part.num,
        end_sector: input.last_sector,
    }];
    if input.lvm {
        ops.push(Op::PvResize {
            pv: input.partition.to_string(),
        });
        ops.push(Op::LvExtendFree {
            lv: input.root_device.to_string(),
        });
    }
    ops.push(match input.fs {
        FsKind::Ext => Op::ResizeExt {
            device: input.root_device.to_string(),
        },
        FsKind::Xfs => Op::GrowXfs,
        FsKind::Btrfs => Op::GrowBtrfs,
    });
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::super::fish::parse_part_list;
    use super::*;

    /// `part-list /dev/sda` recorded on a disk with Ubuntu 24.04's cloud image layout
    /// (made with sfdisk): p14 BIOS boot, p15 EFI, p16 /boot at the front, p1 root last.
    const UBUNTU: &str = include_str!("../../tests/fixtures/part-list-ubuntu.txt");
    /// The layout zoo's cirros-like disk: MBR, one partition starting at sector 16065.
    const CIRROS: &str = include_str!("../../tests/fixtures/part-list-cirros-like.txt");
    /// The layout zoo's lvm-like disk: GPT, BIOS boot (p1), /boot (p2), then the LVM PV (p3).
    const LVM: &str = include_str!("../../tests/fixtures/part-list-lvm-like.txt");

    fn input<'a>(parts: &'a [Partition], num: u32, table: Table, last: u64) -> GrowInput<'a> {
        GrowInput {
            disk: "/dev/sda",
            partition: "/dev/sda1",
            partnum: num,
            table,
            partitions: parts,
            last_sector: last,
            root_device: "/dev/sda1",
            lvm: false,
            fs: FsKind::Ext,
        }
    }

    #[test]
    fn root_partition_one_at_the_end_is_grown_by_position_not_number() {
        let parts = parse_part_list(UBUNTU).unwrap();
        // What the GPT header of a 6 GiB disk records after part-expand-gpt (aligned
        // down to 2048 sectors, not total - 34).
        let last = (6u64 << 21) - 2048;
        let ops = plan_grow(&input(&parts, 1, Table::Gpt, last)).unwrap();
        assert_eq!(
            ops,
            vec![
                Op::ResizePartition {
                    disk: "/dev/sda".into(),
                    num: 1,
                    end_sector: last
                },
                Op::ResizeExt {
                    device: "/dev/sda1".into()
                },
            ]
        );
    }

    #[test]
    fn a_partition_followed_by_another_is_refused_naming_it() {
        let parts = parse_part_list(UBUNTU).unwrap();
        let mut i = input(&parts, 16, Table::Gpt, 6 << 21);
        i.partition = "/dev/sda16";
        let e = plan_grow(&i).unwrap_err().to_string();
        assert!(e.contains("partition 1 of /dev/sda lies after it"), "{e}");
    }

    #[test]
    fn an_unaligned_mbr_partition_grows_to_the_last_sector() {
        let parts = parse_part_list(CIRROS).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].start, 16065 * 512);
        let last = (4u64 << 21) - 1;
        assert_eq!(
            plan_grow(&input(&parts, 1, Table::Mbr, last)).unwrap(),
            vec![
                Op::ResizePartition {
                    disk: "/dev/sda".into(),
                    num: 1,
                    end_sector: last
                },
                Op::ResizeExt {
                    device: "/dev/sda1".into()
                },
            ]
        );
        let logical = [Partition {
            num: 5,
            start: 1 << 20,
            end: (2 << 30) - 1,
            size: (2 << 30) - (1 << 20),
        }];
        assert!(plan_grow(&input(&logical, 5, Table::Mbr, 8 << 21))
            .unwrap_err()
            .to_string()
            .contains("logical partition"));
    }

    #[test]
    fn an_lvm_root_grows_partition_pv_lv_then_xfs() {
        let parts = parse_part_list(LVM).unwrap();
        let pv = parts.iter().max_by_key(|p| p.start).unwrap();
        assert_eq!(pv.num, 3);
        let last = (5u64 << 21) - 2048;
        let mut i = input(&parts, 3, Table::Gpt, last);
        i.partition = "/dev/sda3";
        i.lvm = true;
        i.root_device = "/dev/rootvg/rootlv";
        i.fs = FsKind::Xfs;
        assert_eq!(
            plan_grow(&i).unwrap(),
            vec![
                Op::ResizePartition {
                    disk: "/dev/sda".into(),
                    num: 3,
                    end_sector: last
                },
                Op::PvResize {
                    pv: "/dev/sda3".into()
                },
                Op::LvExtendFree {
                    lv: "/dev/rootvg/rootlv".into()
                },
                Op::GrowXfs,
            ]
        );
    }

    #[test]
    fn a_disk_that_did_not_grow_and_odd_tables_are_errors() {
        let parts = parse_part_list(UBUNTU).unwrap();
        let end = parts[3].end / 512;
        assert!(plan_grow(&input(&parts, 1, Table::Gpt, end))
            .unwrap_err()
            .to_string()
            .contains("nothing to grow"));
        assert!(plan_grow(&input(&parts, 3, Table::Gpt, 6 << 21)).is_err());
        assert!(plan_grow(&input(&parts, 1, Table::Gpt, 10)).is_err());
        assert!(FsKind::parse("vfat").is_err());
    }
}
