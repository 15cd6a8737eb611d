//! The local image store: OCI image layouts under `<image-dir>/<registry>/<name>/<tag>/`
//! (`oci-layout`, `index.json`, `blobs/sha256/...`), each layer unpacked once per digest into
//! `<image-dir>/unpacked/sha256/<hex>/` and stacked by the shim with overlayfs.
//!
//! Also the writer of such layouts ([`write_image`]), used by `cargo xtask images` (through
//! `keel-agent images`) and by tests ([`build_busybox_image`]).
//!
//! Names follow Docker's normalization: `keel.local/echo` is `keel.local/echo:latest`,
//! `busybox` is `docker.io/library/busybox:latest`; a reference `name@sha256:...` picks the tag
//! of `name` whose manifest has that digest.
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::runtime::{Result, RuntimeError};

/// Where `cargo xtask images` puts the images by default (`--image-dir`).
pub const DEFAULT_IMAGE_DIR: &str = "/var/lib/keel/images";
/// The registry part of the images Keel builds itself.
pub const LOCAL_REGISTRY: &str = "keel.local";
/// The default search path when neither the image nor the container sets `PATH`.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// `keel.local`, `docker.io`, `registry.example:5000`.
    pub registry: String,
    /// `echo`, `library/busybox`, `team/app`.
    pub repository: String,
    /// The tag (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// `sha256:<hex>` of the manifest, for `name@sha256:...`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses `[registry/]name[:tag][@digest]` with Docker's defaults.
    pub fn parse(reference: &str) -> Result<ImageRef> {
        let invalid = |why: &str| RuntimeError::Invalid(format!("image {reference:?}: {why}"));
        let r = reference.trim();
        if r.is_empty() {
            return Err(invalid("empty image name"));
        }
        let (rest, digest) = match r.split_once('@') {
            Some((n, d)) => {
                if !is_sha256_digest(d) {
                    return Err(invalid("only sha256 digests are supported"));
                }
                (n, Some(d.to_string()))
            }
            None => (r, None),
        };
        // A tag is a ':' after the last '/' (a ':' before it belongs to a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            Some(_) => ("docker.io".to_string(), name.to_string()),
            None => ("docker.io".to_string(), format!("library/{name}")),
        };
        let part_ok = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || matches!(b, b'.' | b'_' | b'-' | b':')
                })
        };
        if !part_ok(&registry) || !repository.split('/').all(part_ok) || repository.contains(':') {
            return Err(invalid("not a valid image name"));
        }
        if let Some(t) = &tag
            && (t.is_empty()
                || t.len() > 128
                || t.starts_with(['.', '-'])
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
        {
            return Err(invalid("not a valid tag"));
        }
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `<image-dir>/<registry>/<repository>`: the directory holding one layout per tag.
    pub fn repository_dir(&self, image_dir: &Path) -> PathBuf {
        image_dir.join(&self.registry).join(&self.repository)
    }

    /// The full name with tag (`keel.local/echo:latest`), as containerd annotates it.
    pub fn full_name(&self) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

/// What a container takes from its image's config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// An image found in the store, its layers unpacked.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference as given.
    pub reference: String,
    /// The config's digest (`sha256:...`): the image id.
    pub image_id: String,
    /// The manifest's digest (`sha256:...`).
    pub manifest_digest: String,
    pub config: ImageConfig,
    /// Unpacked layer directories in overlayfs `lowerdir` order: the top-most layer first.
    pub lowerdirs: Vec<PathBuf>,
}

/// The store: resolves references to unpacked layers.
#[derive(Debug)]
pub struct ImageStore {
    dir: PathBuf,
    /// Serializes unpacking within this process (other processes are handled by the atomic
    /// rename of each unpacked layer).
    unpack: Mutex<()>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ConfigInner>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ConfigInner {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// `sha256:` followed by 64 lowercase hex digits.
fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

fn hex_of(digest: &str) -> Result<&str> {
    if !is_sha256_digest(digest) {
        return Err(RuntimeError::Invalid(format!(
            "unsupported or malformed digest {digest:?}"
        )));
    }
    Ok(&digest[7..])
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((format!("{:x}", h.finalize()), n))
}

fn sys(what: impl std::fmt::Display, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::System(format!("{what}: {e}"))
}

fn unique_suffix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl ImageStore {
    pub fn new(dir: impl Into<PathBuf>) -> ImageStore {
        ImageStore {
            dir: dir.into(),
            unpack: Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn not_found(&self, reference: &str) -> RuntimeError {
        RuntimeError::ImageNotFound {
            image: reference.to_string(),
            store: self.dir.display().to_string(),
        }
    }

    /// The layout directory of a reference, if the store has it.
    pub fn layout_dir(&self, reference: &str) -> Result<PathBuf> {
        let r = ImageRef::parse(reference)?;
        let repo = r.repository_dir(&self.dir);
        if let Some(tag) = &r.tag {
            let dir = repo.join(tag);
            if dir.join("index.json").is_file() {
                return Ok(dir);
            }
            return Err(self.not_found(reference));
        }
        // By digest: the tag whose index lists that manifest.
        let digest = r.digest.as_deref().unwrap_or_default();
        let entries = fs::read_dir(&repo).map_err(|_| self.not_found(reference))?;
        for e in entries.flatten() {
            let Ok(text) = fs::read(e.path().join("index.json")) else {
                continue;
            };
            let Ok(index) = serde_json::from_slice::<Index>(&text) else {
                continue;
            };
            if index.manifests.iter().any(|m| m.digest == digest) {
                return Ok(e.path());
            }
        }
        Err(self.not_found(reference))
    }

    /// Finds an image, verifies its manifest, config and layers, and unpacks the layers not
    /// unpacked yet. Blocking (file I/O, decompression): call it from a blocking thread.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage> {
        let layout = self.layout_dir(reference)?;
        let r = ImageRef::parse(reference)?;
        let ctx = |what: &str| format!("image {reference} ({}): {what}", layout.display());
        let index_bytes =
            fs::read(layout.join("index.json")).map_err(|e| sys(ctx("reading index.json"), e))?;
        let index: Index = serde_json::from_slice(&index_bytes)
            .map_err(|e| RuntimeError::Invalid(format!("{}: {e}", ctx("index.json"))))?;
        // Prefer the entry naming our tag, else the one matching the digest, else the first.
        let entry = index
            .manifests
            .iter()
            .find(|m| r.digest.as_deref() == Some(m.digest.as_str()))
            .or_else(|| {
                index.manifests.iter().find(|m| {
                    r.tag.as_deref().is_some_and(|t| {
                        m.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(t)
                    })
                })
            })
            .or_else(|| index.manifests.first())
            .ok_or_else(|| RuntimeError::Invalid(ctx("index.json lists no manifest")))?;
        let mut manifest_digest = entry.digest.clone();
        let mut media_type = entry.media_type.clone();
        let mut manifest: Manifest;
        // Follow nested indexes (multi-platform images) to this platform's manifest.
        let mut depth = 0;
        loop {
            let bytes = self.read_blob(&layout, &manifest_digest, None)?;
            manifest = serde_json::from_slice(&bytes).map_err(|e| {
                RuntimeError::Invalid(format!("{}: {e}", ctx("manifest is not valid JSON")))
            })?;
            let is_index = media_type == MEDIA_INDEX
                || media_type == MEDIA_DOCKER_LIST
                || manifest.media_type == MEDIA_INDEX
                || manifest.media_type == MEDIA_DOCKER_LIST
                || manifest.manifests.is_some();
            if !is_index {
                break;
            }
            depth += 1;
            if depth > 4 {
                return Err(RuntimeError::Invalid(ctx("image indexes nest too deeply")));
            }
            let arch = oci_arch();
            let list = manifest.manifests.take().unwrap_or_default();
            let chosen = list
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == arch)
                })
                .ok_or_else(|| {
                    RuntimeError::Invalid(ctx(&format!("no manifest for linux/{arch}")))
                })?;
            manifest_digest = chosen.digest.clone();
            media_type = chosen.media_type.clone();
        }
        let config_desc = manifest
            .config
            .as_ref()
            .ok_or_else(|| RuntimeError::Invalid(ctx("manifest has no config")))?;
        let config_bytes = self.read_blob(&layout, &config_desc.digest, config_desc.size)?;
        let config_file: ConfigFile = serde_json::from_slice(&config_bytes).map_err(|e| {
            RuntimeError::Invalid(format!("{}: {e}", ctx("config is not valid JSON")))
        })?;
        let inner = config_file.config.unwrap_or_default();
        let config = ImageConfig {
            entrypoint: inner.entrypoint.unwrap_or_default(),
            cmd: inner.cmd.unwrap_or_default(),
            env: inner.env.unwrap_or_default(),
            working_dir: inner.working_dir.filter(|w| !w.is_empty()),
            user: inner.user.filter(|u| !u.is_empty()),
        };
        let mut lowerdirs = Vec::with_capacity(manifest.layers.len());
        for layer in &manifest.layers {
            lowerdirs.push(self.unpack_layer(&layout, layer)?);
        }
        if lowerdirs.is_empty() {
            return Err(RuntimeError::Invalid(ctx("image has no layers")));
        }
        lowerdirs.reverse();
        Ok(ResolvedImage {
            reference: reference.to_string(),
            image_id: config_desc.digest.clone(),
            manifest_digest,
            config,
            lowerdirs,
        })
    }

    /// Reads a small blob (manifest, config) and checks its digest and size.
    fn read_blob(&self, layout: &Path, digest: &str, size: Option<u64>) -> Result<Vec<u8>> {
        let hex = hex_of(digest)?;
        let path = layout.join("blobs/sha256").join(hex);
        let meta = fs::metadata(&path).map_err(|e| sys(path.display(), e))?;
        if meta.len() > 64 * 1024 * 1024 {
            return Err(RuntimeError::Invalid(format!(
                "{}: too large for a manifest or config",
                path.display()
            )));
        }
        let bytes = fs::read(&path).map_err(|e| sys(path.display(), e))?;
        if sha256_hex(&bytes) != hex {
            return Err(RuntimeError::Invalid(format!(
                "{}: content does not match its digest",
                path.display()
            )));
        }
        if size.is_some_and(|s| s != bytes.len() as u64) {
            return Err(RuntimeError::Invalid(format!(
                "{}: size differs from the descriptor's",
                path.display()
            )));
        }
        Ok(bytes)
    }

    /// The directory a layer digest unpacks to.
    pub fn unpacked_dir(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join("unpacked/sha256").join(hex_of(digest)?))
    }

    fn unpack_layer(&self, layout: &Path, layer: &Descriptor) -> Result<PathBuf> {
        let hex = hex_of(&layer.digest)?;
        let target = self.unpacked_dir(&layer.digest)?;
        if target.is_dir() {
            return Ok(target);
        }
        let _guard = self.unpack.lock().unwrap_or_else(|p| p.into_inner());
        if target.is_dir() {
            return Ok(target);
        }
        let blob = layout.join("blobs/sha256").join(hex);
        let (actual, size) = sha256_file(&blob).map_err(|e| sys(blob.display(), e))?;
        if actual != hex {
            return Err(RuntimeError::Invalid(format!(
                "layer {}: content does not match its digest",
                blob.display()
            )));
        }
        if layer.size.is_some_and(|s| s != size) {
            return Err(RuntimeError::Invalid(format!(
                "layer {}: size differs from the descriptor's",
                blob.display()
            )));
        }
        let parent = target
            .parent()
            .ok_or_else(|| RuntimeError::System("unpacked dir has no parent".into()))?;
        fs::create_dir_all(parent).map_err(|e| sys(parent.display(), e))?;
        let tmp = parent.join(format!(".tmp-{hex}-{}", unique_suffix()));
        let result = unpack_tar(&blob, &layer.media_type, &tmp);
        let result = result.and_then(|()| match fs::rename(&tmp, &target) {
            Ok(()) => Ok(()),
            // Another process unpacked it meanwhile.
            Err(_) if target.is_dir() => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => Err(sys(format!("renaming into {}", target.display()), e)),
        });
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(RuntimeError::Invalid(format!(
                "unpacking layer {} of {}: {e}",
                layer.digest,
                layout.display()
            )));
        }
        Ok(target)
    }
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Unpacks a (possibly gzip-compressed) layer tarball into `dst`, turning OCI whiteouts into
/// overlayfs ones (a 0/0 character device; the `trusted.overlay.opaque` xattr).
fn unpack_tar(blob: &Path, media_type: &str, dst: &Path) -> Result<()> {
    if media_type.contains("zstd") {
        return Err(RuntimeError::Invalid(
            "zstd-compressed layers are not supported".into(),
        ));
    }
    let mut magic = [0u8; 2];
    let mut f = File::open(blob).map_err(|e| sys(blob.display(), e))?;
    let n = f.read(&mut magic).map_err(|e| sys(blob.display(), e))?;
    let f = File::open(blob).map_err(|e| sys(blob.display(), e))?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(f)))
    } else {
        Box::new(io::BufReader::new(f))
    };
    fs::create_dir(dst).map_err(|e| sys(dst.display(), e))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755))
        .map_err(|e| sys(dst.display(), e))?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let entries = archive.entries().map_err(|e| sys("reading the tar", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| sys("reading the tar", e))?;
        let path = entry
            .path()
            .map_err(|e| sys("tar entry path", e))?
            .into_owned();
        let Some(rel) = clean_relative(&path) else {
            continue; // the root itself, or a path escaping it: skip
        };
        let name = rel
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        if name == b".wh..wh..opq" {
            let dir = safe_dir(dst, rel.parent().unwrap_or(Path::new("")))?;
            set_xattr(&dir, "trusted.overlay.opaque", b"y")?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            let dir = safe_dir(dst, rel.parent().unwrap_or(Path::new("")))?;
            let target = dir.join(std::ffi::OsStr::from_bytes(hidden));
            remove_any(&target);
            // An overlayfs whiteout: a 0/0 character device with no permissions.
            mknod(&target, libc::S_IFCHR, 0)?;
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let dir = safe_dir(dst, rel.parent().unwrap_or(Path::new("")))?;
            let target = dir.join(rel.file_name().unwrap_or_default());
            remove_any(&target);
            let h = entry.header();
            let mode = h.mode().unwrap_or(0o644) & 0o7777;
            let fmt = if kind.is_character_special() {
                libc::S_IFCHR
            } else if kind.is_block_special() {
                libc::S_IFBLK
            } else {
                libc::S_IFIFO
            };
            let major = h.device_major().ok().flatten().unwrap_or(0);
            let minor = h.device_minor().ok().flatten().unwrap_or(0);
            mknod(&target, fmt | mode, libc::makedev(major, minor))?;
            continue;
        }
        entry
            .unpack_in(dst)
            .map_err(|e| sys(format!("unpacking {}", rel.display()), error_chain(&e)))?;
    }
    Ok(())
}

/// An error and its sources (the tar crate puts the cause in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// A tar path made relative and free of `..` (None: the root or an escaping path).
fn clean_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Creates `root/rel` as a directory, refusing to go through symlinks (which could point
/// outside `root`).
fn safe_dir(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        let Component::Normal(n) = c else { continue };
        cur.push(n);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(RuntimeError::Invalid(format!(
                    "{} is a symlink in a path the layer writes through",
                    cur.display()
                )));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(RuntimeError::Invalid(format!(
                    "{} is not a directory",
                    cur.display()
                )));
            }
            Err(_) => {
                fs::create_dir(&cur).map_err(|e| sys(cur.display(), e))?;
            }
        }
    }
    Ok(cur)
}

fn remove_any(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::Invalid(format!("{} contains a NUL byte", p.display())))
}

fn mknod(p: &Path, mode: libc::mode_t, dev: libc::dev_t) -> Result<()> {
    let c = cpath(p)?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } != 0 {
        return Err(sys(
            format!("mknod {}", p.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> Result<()> {
    let c = cpath(p)?;
    let n = CString::new(name).map_err(|_| RuntimeError::Invalid("xattr name".into()))?;
    // SAFETY: valid C strings and a value buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(sys(
            format!("setting {name} on {}", p.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Writing images.

/// One file of an image being built.
#[derive(Clone, Debug)]
pub struct ImageFile {
    /// Path in the image, without the leading `/` (`bin/sh`).
    pub path: String,
    pub mode: u32,
    pub kind: ImageFileKind,
}

#[derive(Clone, Debug)]
pub enum ImageFileKind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
}

impl ImageFile {
    pub fn file(path: &str, mode: u32, content: impl Into<Vec<u8>>) -> ImageFile {
        ImageFile {
            path: path.trim_start_matches('/').to_string(),
            mode,
            kind: ImageFileKind::File(content.into()),
        }
    }

    pub fn dir(path: &str, mode: u32) -> ImageFile {
        ImageFile {
            path: path.trim_start_matches('/').to_string(),
            mode,
            kind: ImageFileKind::Dir,
        }
    }

    pub fn symlink(path: &str, target: &str) -> ImageFile {
        ImageFile {
            path: path.trim_start_matches('/').to_string(),
            mode: 0o777,
            kind: ImageFileKind::Symlink(target.to_string()),
        }
    }
}

/// An image to write: one layer made of `files`, and the config.
#[derive(Clone, Debug, Default)]
pub struct ImageBuild {
    /// `keel.local/echo:latest`.
    pub reference: String,
    pub files: Vec<ImageFile>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value`.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `8080/tcp`.
    pub exposed_ports: Vec<String>,
}

/// What [`write_image`] wrote.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub reference: String,
    /// The layout directory.
    pub dir: PathBuf,
    /// The config digest (the image id).
    pub image_id: String,
    pub manifest_digest: String,
    /// False when an identical image was already there.
    pub changed: bool,
}

/// The base files every image Keel builds has: `/etc/passwd`, `/etc/group`, `/tmp`, `/root`.
pub fn base_files() -> Vec<ImageFile> {
    vec![
        ImageFile::dir("etc", 0o755),
        ImageFile::file(
            "etc/passwd",
            0o644,
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ImageFile::file("etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n"),
        ImageFile::dir("tmp", 0o1777),
        ImageFile::dir("root", 0o700),
        ImageFile::dir("proc", 0o555),
        ImageFile::dir("sys", 0o555),
        ImageFile::dir("dev", 0o755),
    ]
}

/// Builds the layer tarball (deterministic: sorted, zero mtimes, root-owned, parents added).
fn layer_tar(files: &[ImageFile]) -> Result<Vec<u8>> {
    let mut by_path: BTreeMap<String, &ImageFile> = BTreeMap::new();
    for f in files {
        let p = f.path.trim_matches('/').to_string();
        if p.is_empty() || clean_relative(Path::new(&p)).is_none() {
            return Err(RuntimeError::Invalid(format!(
                "image file path {:?}",
                f.path
            )));
        }
        by_path.insert(p, f);
    }
    // Parent directories not listed explicitly.
    let mut parents = BTreeSet::new();
    for p in by_path.keys() {
        let mut cur = Path::new(p).parent();
        while let Some(d) = cur {
            if !d.as_os_str().is_empty() {
                parents.insert(d.to_string_lossy().into_owned());
            }
            cur = d.parent();
        }
    }
    let dir_default = ImageFile::dir("", 0o755);
    let mut all: BTreeMap<String, &ImageFile> = parents
        .into_iter()
        .filter(|d| !by_path.contains_key(d))
        .map(|d| (d, &dir_default))
        .collect();
    all.extend(by_path);
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    for (path, f) in all {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(f.mode);
        let err = |e: io::Error| sys(format!("adding {path} to the layer"), e);
        match &f.kind {
            ImageFileKind::File(content) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(content.len() as u64);
                b.append_data(&mut h, &path, content.as_slice())
                    .map_err(err)?;
            }
            ImageFileKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), io::empty())
                    .map_err(err)?;
            }
            ImageFileKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &path, target).map_err(err)?;
            }
        }
    }
    b.into_inner().map_err(|e| sys("finishing the layer", e))
}

/// Writes `build` as an OCI image layout at `<image_dir>/<registry>/<name>/<tag>/`. Idempotent:
/// the same input gives the same digests, and an identical layout is left alone.
pub fn write_image(image_dir: &Path, build: &ImageBuild) -> Result<BuiltImage> {
    let r = ImageRef::parse(&build.reference)?;
    let tag = r.tag.clone().ok_or_else(|| {
        RuntimeError::Invalid(format!("{}: writing an image needs a tag", build.reference))
    })?;
    let tar = layer_tar(&build.files)?;
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)
        .map_err(|e| sys("compressing the layer", e))?;
    let layer = gz.finish().map_err(|e| sys("compressing the layer", e))?;
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    let mut config = serde_json::json!({
        "Env": build.env,
    });
    if !build.entrypoint.is_empty() {
        config["Entrypoint"] = serde_json::json!(build.entrypoint);
    }
    if !build.cmd.is_empty() {
        config["Cmd"] = serde_json::json!(build.cmd);
    }
    if let Some(w) = &build.working_dir {
        config["WorkingDir"] = serde_json::json!(w);
    }
    if !build.exposed_ports.is_empty() {
        let ports: serde_json::Map<String, serde_json::Value> = build
            .exposed_ports
            .iter()
            .map(|p| (p.clone(), serde_json::json!({})))
            .collect();
        config["ExposedPorts"] = serde_json::Value::Object(ports);
    }
    let config_json = serde_json::to_vec(&serde_json::json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": oci_arch(),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "keel images"}],
    }))
    .map_err(|e| sys("encoding the config", e))?;
    let config_digest = format!("sha256:{}", sha256_hex(&config_json));
    let manifest_json = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_json.len()},
        "layers": [{"mediaType": MEDIA_LAYER_GZIP, "digest": layer_digest, "size": layer.len()}],
    }))
    .map_err(|e| sys("encoding the manifest", e))?;
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest_json));
    let full_name = format!("{}/{}:{tag}", r.registry, r.repository);
    let index_json = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_json.len(),
            "annotations": {ANNOTATION_REF_NAME: tag, ANNOTATION_CONTAINERD_NAME: full_name},
        }],
    }))
    .map_err(|e| sys("encoding the index", e))?;

    let repo_dir = r.repository_dir(image_dir);
    let dir = repo_dir.join(&tag);
    let blob = |d: &str| format!("blobs/sha256/{}", &d[7..]);
    let blobs = [
        (blob(&layer_digest), &layer),
        (blob(&config_digest), &config_json),
        (blob(&manifest_digest), &manifest_json),
    ];
    let built = |changed| BuiltImage {
        reference: full_name.clone(),
        dir: dir.clone(),
        image_id: config_digest.clone(),
        manifest_digest: manifest_digest.clone(),
        changed,
    };
    let same = fs::read(dir.join("index.json")).is_ok_and(|b| b == index_json)
        && blobs.iter().all(|(p, _)| dir.join(p).is_file());
    if same {
        return Ok(built(false));
    }
    fs::create_dir_all(&repo_dir).map_err(|e| sys(repo_dir.display(), e))?;
    let tmp = repo_dir.join(format!(".{tag}.tmp-{}", unique_suffix()));
    let write_all = || -> io::Result<()> {
        fs::create_dir_all(tmp.join("blobs/sha256"))?;
        fs::write(tmp.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        for (p, bytes) in &blobs {
            fs::write(tmp.join(p), bytes)?;
        }
        fs::write(tmp.join("index.json"), &index_json)?;
        Ok(())
    };
    if let Err(e) = write_all() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(sys(format!("writing {}", tmp.display()), e));
    }
    let old = repo_dir.join(format!(".{tag}.old-{}", unique_suffix()));
    let had_old = fs::rename(&dir, &old).is_ok();
    if let Err(e) = fs::rename(&tmp, &dir) {
        let _ = fs::remove_dir_all(&tmp);
        if had_old {
            let _ = fs::rename(&old, &dir);
        }
        return Err(sys(format!("installing {}", dir.display()), e));
    }
    if had_old {
        let _ = fs::remove_dir_all(&old);
    }
    Ok(built(true))
}

/// Builds `keel.local/busybox:latest` from a static busybox binary (Debian's busybox-static
/// installs `/bin/busybox`) with its applet symlinks, `/etc/passwd`, `/etc/group` and `/tmp`.
pub fn build_busybox_image_from(image_dir: &Path, busybox: &Path) -> Result<BuiltImage> {
    let binary = fs::read(busybox).map_err(|e| {
        sys(
            format!(
                "reading {} (install Debian's busybox-static: `cargo xtask setup`)",
                busybox.display()
            ),
            e,
        )
    })?;
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| sys(format!("running {} --list-full", busybox.display()), e))?;
    if !out.status.success() {
        return Err(RuntimeError::System(format!(
            "{} --list-full failed ({})",
            busybox.display(),
            out.status
        )));
    }
    let mode = fs::metadata(busybox)
        .map(|m| m.mode() & 0o7777)
        .unwrap_or(0o755);
    let mut files = base_files();
    files.push(ImageFile::file("bin/busybox", mode | 0o555, binary));
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" || !applet.contains('/') {
            continue;
        }
        files.push(ImageFile::symlink(applet, "/bin/busybox"));
    }
    write_image(
        image_dir,
        &ImageBuild {
            reference: format!("{LOCAL_REGISTRY}/busybox:latest"),
            files,
            cmd: vec!["sh".into()],
            env: vec![format!("PATH={DEFAULT_PATH}")],
            ..Default::default()
        },
    )
}

/// [`build_busybox_image_from`] with `/bin/busybox`.
pub fn build_busybox_image(image_dir: &Path) -> Result<BuiltImage> {
    build_busybox_image_from(image_dir, Path::new("/bin/busybox"))
}

/// Builds `keel.local/echo:latest` from the static `keel-echo` binary: `/keel-echo` as the
/// entrypoint, `PORT=8080`.
pub fn build_echo_image(image_dir: &Path, echo_binary: &Path) -> Result<BuiltImage> {
    let binary = fs::read(echo_binary).map_err(|e| sys(echo_binary.display(), e))?;
    let mut files = base_files();
    files.push(ImageFile::file("keel-echo", 0o755, binary));
    write_image(
        image_dir,
        &ImageBuild {
            reference: format!("{LOCAL_REGISTRY}/echo:latest"),
            files,
            entrypoint: vec!["/keel-echo".into()],
            env: vec![format!("PATH={DEFAULT_PATH}"), "PORT=8080".into()],
            exposed_ports: vec!["8080/tcp".into()],
            ..Default::default()
        },
    )
}

/// `keel-agent images`: writes `keel.local/busybox:latest` and, given the static `keel-echo`
/// binary, `keel.local/echo:latest`; prints one line per image.
pub fn build_keel_images(
    image_dir: &Path,
    busybox: &Path,
    echo_binary: Option<&Path>,
) -> Result<Vec<BuiltImage>> {
    fs::create_dir_all(image_dir).map_err(|e| {
        sys(
            format!(
                "creating the image store {} (the default needs root)",
                image_dir.display()
            ),
            e,
        )
    })?;
    let mut built = vec![build_busybox_image_from(image_dir, busybox)?];
    if let Some(echo) = echo_binary {
        built.push(build_echo_image(image_dir, echo)?);
    }
    for b in &built {
        println!(
            "{} {} ({})",
            b.reference,
            b.image_id,
            if b.changed { "written" } else { "unchanged" }
        );
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_like_docker() {
        let r = ImageRef::parse("keel.local/echo").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("keel.local", "echo", Some("latest"))
        );
        let r = ImageRef::parse("busybox:1.36").unwrap();
        assert_eq!(r.full_name(), "docker.io/library/busybox:1.36");
        let r = ImageRef::parse("docker.io/team/app").unwrap();
        assert_eq!(r.full_name(), "docker.io/team/app:latest");
        let r = ImageRef::parse("localhost:5000/app:v1").unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("keel.local/echo@{d}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(d.as_str())));
        for bad in [
            "",
            "../x",
            "keel.local/../../etc",
            "Upper/Case",
            "a:b:c",
            "x@md5:1",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_written_image_resolves_and_unpacks() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = base_files();
        files.push(ImageFile::file("bin/hello", 0o755, "#!/bin/sh\necho hi\n"));
        files.push(ImageFile::symlink("bin/hi", "/bin/hello"));
        let build = ImageBuild {
            reference: "keel.local/test:v1".into(),
            files,
            entrypoint: vec!["/bin/hello".into()],
            cmd: vec!["x".into()],
            env: vec!["A=1".into()],
            working_dir: Some("/tmp".into()),
            exposed_ports: vec![],
        };
        let first = write_image(dir.path(), &build).unwrap();
        assert!(first.changed);
        let again = write_image(dir.path(), &build).unwrap();
        assert!(!again.changed, "identical image rewritten");
        assert_eq!(first.image_id, again.image_id);

        let store = ImageStore::new(dir.path());
        let img = store.resolve("keel.local/test:v1").unwrap();
        assert_eq!(img.image_id, first.image_id);
        assert_eq!(img.config.entrypoint, ["/bin/hello"]);
        assert_eq!(img.config.cmd, ["x"]);
        assert_eq!(img.config.env, ["A=1"]);
        assert_eq!(img.config.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(img.lowerdirs.len(), 1);
        let root = &img.lowerdirs[0];
        assert_eq!(
            fs::read_to_string(root.join("bin/hello")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            fs::read_link(root.join("bin/hi")).unwrap(),
            Path::new("/bin/hello")
        );
        let tmp_mode = fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777;
        assert_eq!(tmp_mode, 0o1777);
        // By digest, too.
        let by_digest = store
            .resolve(&format!("keel.local/test@{}", first.manifest_digest))
            .unwrap();
        assert_eq!(by_digest.lowerdirs, img.lowerdirs);
    }

    #[test]
    fn whiteouts_become_overlayfs_whiteouts() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP whiteouts_become_overlayfs_whiteouts: mknod and trusted.* need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in [("a/.wh.gone", ""), ("c/.wh..wh..opq", ""), ("c/kept", "k")] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            b.append_data(&mut h, path, data.as_bytes()).unwrap();
        }
        let blob = dir.path().join("layer.tar");
        fs::write(&blob, b.into_inner().unwrap()).unwrap();
        let out = dir.path().join("out");
        unpack_tar(&blob, "application/vnd.oci.image.layer.v1.tar", &out).unwrap();
        let m = fs::symlink_metadata(out.join("a/gone")).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), 0);
        let mut v = [0u8; 4];
        let c = cpath(&out.join("c")).unwrap();
        // SAFETY: valid path and attribute name, and a buffer of the given size.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                v.as_mut_ptr().cast(),
                v.len(),
            )
        };
        assert_eq!(n, 1);
        assert_eq!(v[0], b'y');
        assert_eq!(fs::read_to_string(out.join("c/kept")).unwrap(), "k");
        assert!(!out.join("a/.wh.gone").exists());
    }

    #[test]
    fn a_missing_image_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path());
        let e = store.resolve("keel.local/echo:latest").unwrap_err();
        assert!(matches!(e, RuntimeError::ImageNotFound { .. }));
        assert!(e.to_string().contains("cargo xtask images"), "{e}");
    }

    #[test]
    fn a_corrupted_layer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let built = write_image(
            dir.path(),
            &ImageBuild {
                reference: "keel.local/bad:latest".into(),
                files: base_files(),
                cmd: vec!["sh".into()],
                ..Default::default()
            },
        )
        .unwrap();
        for e in fs::read_dir(built.dir.join("blobs/sha256")).unwrap() {
            let p = e.unwrap().path();
            let bytes = fs::read(&p).unwrap();
            if bytes.starts_with(&[0x1f, 0x8b]) {
                let mut b = bytes.clone();
                let last = b.len() - 1;
                b[last] ^= 0xff;
                fs::write(&p, b).unwrap();
            }
        }
        let e = ImageStore::new(dir.path())
            .resolve("keel.local/bad")
            .unwrap_err();
        assert!(e.to_string().contains("does not match its digest"), "{e}");
    }
}
