//! Mounting a workspace's disk image without running mount(8): the image is bound to a free
//! loop device with the kernel's `LOOP_CONFIGURE`, which sets "clear on last close" in the
//! same call, and the device is mounted with mount(2). That is what `mount -o loop` does too,
//! but a start then waits for a process and its library setup: about 5 ms of a ~45 ms start,
//! against about 1.2 ms for the system calls themselves.
//!
//! No loop device can be left behind: from the moment it is bound it clears itself when its
//! last user goes: the open descriptor here (dropped on any error, or when the cell dies before
//! mounting), then the mount (at unmount).
//!
//! The cell's only unsafe code: two `ioctl`s, their argument layouts from linux-raw-sys (made
//! from the kernel's own headers). Anything unusual (no free device node, a kernel before
//! `LOOP_CONFIGURE`) is an error the caller answers by running mount(8) instead.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use linux_raw_sys::loop_device::{
    LO_FLAGS_AUTOCLEAR, LOOP_CLR_FD, LOOP_CONFIGURE, LOOP_CTL_GET_FREE, loop_config, loop_info64,
};
use rustix::io::Errno;
use rustix::ioctl::{Ioctl, IoctlOutput, NoArg, Opcode, Setter, ioctl};
use rustix::mount::MountFlags;

/// `LOOP_CTL_GET_FREE`: the number of a loop device that is free now (the kernel adds one if
/// none is).
struct GetFree;

// SAFETY: the request takes no argument (the pointer is null and never read) and returns the
// device number as the call's result.
unsafe impl Ioctl for GetFree {
    type Output = u32;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        LOOP_CTL_GET_FREE as Opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::null_mut()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<u32> {
        u32::try_from(out).map_err(|_| Errno::RANGE)
    }
}

/// Binds `image` to a free loop device and mounts that device's ext4 filesystem at `dir`
/// with `flags` and the filesystem options `data`.
pub fn mount_image(
    image: &Path,
    dir: &Path,
    flags: MountFlags,
    data: &std::ffi::CStr,
) -> Result<(), String> {
    let backing = open_rw(image)?;
    let control = open_rw(Path::new("/dev/loop-control"))?;
    let mut taken = 0;
    loop {
        // SAFETY: see `GetFree`.
        let n =
            unsafe { ioctl(&control, GetFree) }.map_err(|e| format!("no free loop device: {e}"))?;
        let path = format!("/dev/loop{n}");
        let device = open_rw(Path::new(&path))?;
        let config = loop_config {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: info(image),
            __reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config` through the pointer, which
        // points at `config` for the whole call; `backing`, the descriptor in it, is open.
        let bound = unsafe {
            ioctl(
                &device,
                Setter::<{ LOOP_CONFIGURE as Opcode }, loop_config>::new(config),
            )
        };
        match bound {
            Ok(()) => {}
            // Another process bound it between our two calls: ask for another.
            Err(Errno::BUSY) if taken < 16 => {
                taken += 1;
                continue;
            }
            Err(e) => return Err(format!("cannot bind {path} to {}: {e}", image.display())),
        }
        return rustix::mount::mount(&path, dir, "ext4", flags, data).map_err(|e| {
            // SAFETY: LOOP_CLR_FD takes no argument.
            let _ = unsafe { ioctl(&device, NoArg::<{ LOOP_CLR_FD as Opcode }>::new()) };
            format!("cannot mount {} at {}: {e}", image.display(), dir.display())
        });
    }
}

fn open_rw(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The device's settings: clear itself on last close; the image's name for `losetup -l`.
fn info(image: &Path) -> loop_info64 {
    let mut name = [0u8; 64];
    let bytes = image.as_os_str().as_encoded_bytes();
    let keep = bytes.len().min(name.len() - 1);
    name[..keep].copy_from_slice(&bytes[bytes.len() - keep..]);
    loop_info64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_AUTOCLEAR as u32,
        lo_file_name: name,
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop devices bound to `image`, from sysfs.
    fn devices_of(image: &Path) -> Vec<String> {
        let image = std::fs::canonicalize(image).unwrap();
        std::fs::read_dir("/sys/block")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("loop/backing_file"))
                    .is_ok_and(|b| Path::new(b.trim()) == image)
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn an_image_mounts_in_process_and_its_loop_device_goes_with_the_mount() {
        assert!(
            Path::new("/dev/loop-control").exists() && super::super::cgroup::is_root(),
            "loop devices need root and /dev/loop-control"
        );
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("disk.ext4");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let made = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .status()
            .expect("mkfs.ext4 is missing: apt-get install -y e2fsprogs");
        assert!(made.success());
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();

        mount_image(&image, &dir, MountFlags::NOSUID, c"discard").unwrap();
        let guard = Unmount(&dir);
        assert!(super::super::disk::is_mount_point(&dir));
        std::fs::write(dir.join("file"), "on the image").unwrap();
        let bound = devices_of(&image);
        assert_eq!(bound.len(), 1, "{bound:?}");
        let autoclear = std::fs::read_to_string(format!("/sys/block/{}/loop/autoclear", bound[0]));
        assert_eq!(autoclear.unwrap().trim(), "1");

        drop(guard);
        assert!(!super::super::disk::is_mount_point(&dir));
        assert!(!dir.join("file").exists());
        // The device cleared itself with the unmount (the kernel may take a moment).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !devices_of(&image).is_empty() {
            assert!(
                std::time::Instant::now() < until,
                "{:?}",
                devices_of(&image)
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }

        // A file that is no filesystem fails to mount and leaves no device bound either.
        let junk = tmp.path().join("junk.img");
        std::fs::File::create(&junk)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let err = mount_image(&junk, &dir, MountFlags::empty(), c"").unwrap_err();
        assert!(err.contains("cannot mount"), "{err}");
        assert!(devices_of(&junk).is_empty());
    }

    /// Unmounts `dir` when dropped, also when an assertion fails first.
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }
}
