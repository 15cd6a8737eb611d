//! Pod volumes made into host directories under `<root_dir>/pods/<uid>/volumes/`, laid out as
//! kubelet does (`kubernetes.io~empty-dir/<name>`, `kubernetes.io~configmap/<name>`, ...):
//!
//! - emptyDir: a directory (a tmpfs for `medium: Memory`, sized by `sizeLimit`);
//! - hostPath: the host path itself, after the `type` check (`DirectoryOrCreate`, `File`, ...);
//! - configMap, secret, downwardAPI and projected (those three sources): files written with
//!   kubelet's atomic writer (a timestamped directory, a `..data` symlink to it switched by
//!   rename, and one symlink per top-level entry into `..data`), honouring `items`, `mode` and
//!   `defaultMode`, so updates are atomic for readers and can be re-projected any time.
//!
//! Then each container's `volumeMounts` become runtime [`Mount`]s (`subPath`/`subPathExpr`
//! resolved inside the volume). Teardown unmounts anything left under the pod directory and
//! removes it.
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod, Volume};
use tracing::warn;

use super::env::{self, ConfigError, Lookups, PodRuntimeInfo};
use super::quantity::Quantity;
use crate::runtime::Mount;

/// kubelet's default mode of projected files.
const DEFAULT_MODE: u32 = 0o644;

/// Why a volume could not be set up (kubelet's `FailedMount`); the pod waits in
/// `ContainerCreating` and the agent retries.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A source (ConfigMap, Secret, key) is missing or unreadable.
    #[error("MountVolume.SetUp failed for volume {volume:?}: {source}")]
    Source {
        volume: String,
        #[source]
        source: ConfigError,
    },
    /// The hostPath `type` check failed.
    #[error(
        "MountVolume.SetUp failed for volume {volume:?}: hostPath type check failed: {message}"
    )]
    HostPathType { volume: String, message: String },
    /// The volume type is not one the agent supports.
    #[error("volume {volume:?}: {kind} volumes are not supported by keel-agent")]
    Unsupported { volume: String, kind: String },
    /// A path in the volume's definition is not acceptable.
    #[error("volume {volume:?}: {message}")]
    Invalid { volume: String, message: String },
    /// Creating files or mounts failed.
    #[error("MountVolume.SetUp failed for volume {volume:?}: {source}")]
    Io {
        volume: String,
        #[source]
        source: io::Error,
    },
}

/// A volume ready on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostVolume {
    pub path: PathBuf,
    /// Projected volumes (configMap, secret, downwardAPI, projected) are always read-only.
    pub read_only: bool,
}

/// The pod's directory: `<root_dir>/pods/<uid>`.
pub fn pod_dir(root_dir: &Path, uid: &str) -> PathBuf {
    root_dir.join("pods").join(uid)
}

fn volume_dir(root_dir: &Path, uid: &str, plugin: &str, name: &str) -> PathBuf {
    pod_dir(root_dir, uid)
        .join("volumes")
        .join(format!("kubernetes.io~{plugin}"))
        .join(name)
}

/// Sets up every volume of the pod (idempotent: re-running re-projects changed sources).
pub async fn setup(
    root_dir: &Path,
    pod: &Pod,
    info: &PodRuntimeInfo,
    lookups: &mut Lookups<'_>,
) -> Result<HashMap<String, HostVolume>, VolumeError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let mut out = HashMap::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let host = setup_volume(root_dir, uid, pod, volume, info, lookups).await?;
        out.insert(volume.name.clone(), host);
    }
    Ok(out)
}

fn io_err(volume: &str) -> impl Fn(io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        volume: volume.to_string(),
        source,
    }
}

async fn setup_volume(
    root_dir: &Path,
    uid: &str,
    pod: &Pod,
    volume: &Volume,
    info: &PodRuntimeInfo,
    lookups: &mut Lookups<'_>,
) -> Result<HostVolume, VolumeError> {
    let name = volume.name.as_str();
    let source_err = |source| VolumeError::Source {
        volume: name.to_string(),
        source,
    };
    if let Some(empty) = &volume.empty_dir {
        let dir = volume_dir(root_dir, uid, "empty-dir", name);
        std::fs::create_dir_all(&dir).map_err(io_err(name))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .map_err(io_err(name))?;
        if empty.medium.as_deref() == Some("Memory") && !is_mount_point(&dir) {
            let size = match &empty.size_limit {
                Some(q) => Quantity::parse(&q.0)
                    .ok()
                    .and_then(|q| q.units_u64())
                    .filter(|b| *b > 0),
                None => None,
            };
            mount_tmpfs(&dir, size).map_err(io_err(name))?;
        }
        return Ok(HostVolume {
            path: dir,
            read_only: false,
        });
    }
    if let Some(host) = &volume.host_path {
        let path = PathBuf::from(&host.path);
        check_host_path(&path, host.type_.as_deref().unwrap_or("")).map_err(|message| {
            VolumeError::HostPathType {
                volume: name.to_string(),
                message,
            }
        })?;
        return Ok(HostVolume {
            path,
            read_only: false,
        });
    }
    let mut files: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    let plugin;
    if let Some(cm) = &volume.config_map {
        plugin = "configmap";
        let default_mode = mode_of(cm.default_mode);
        let optional = cm.optional.unwrap_or(false);
        match lookups.config_map(&cm.name).await.map_err(source_err)? {
            Some(entries) => project_keys(
                &entries,
                cm.items.as_deref(),
                default_mode,
                optional,
                |key| ConfigError::ConfigMapKeyMissing {
                    namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                    name: cm.name.clone(),
                    key,
                },
                &mut files,
            )
            .map_err(source_err)?,
            None if optional => {}
            None => return Err(source_err(ConfigError::ConfigMapNotFound(cm.name.clone()))),
        }
    } else if let Some(secret) = &volume.secret {
        plugin = "secret";
        let secret_name = secret.secret_name.clone().unwrap_or_default();
        let default_mode = mode_of(secret.default_mode);
        let optional = secret.optional.unwrap_or(false);
        match lookups.secret(&secret_name).await.map_err(source_err)? {
            Some(entries) => project_keys(
                &entries,
                secret.items.as_deref(),
                default_mode,
                optional,
                |key| ConfigError::SecretKeyMissing {
                    namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                    name: secret_name.clone(),
                    key,
                },
                &mut files,
            )
            .map_err(source_err)?,
            None if optional => {}
            None => return Err(source_err(ConfigError::SecretNotFound(secret_name))),
        }
    } else if let Some(downward) = &volume.downward_api {
        plugin = "downward-api";
        let default_mode = mode_of(downward.default_mode);
        project_downward(
            pod,
            info,
            downward.items.as_deref(),
            default_mode,
            &mut files,
        )
        .map_err(source_err)?;
    } else if let Some(projected) = &volume.projected {
        plugin = "projected";
        let default_mode = mode_of(projected.default_mode);
        for source in projected.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                let optional = cm.optional.unwrap_or(false);
                match lookups.config_map(&cm.name).await.map_err(source_err)? {
                    Some(entries) => project_keys(
                        &entries,
                        cm.items.as_deref(),
                        default_mode,
                        optional,
                        |key| ConfigError::ConfigMapKeyMissing {
                            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                            name: cm.name.clone(),
                            key,
                        },
                        &mut files,
                    )
                    .map_err(source_err)?,
                    None if optional => {}
                    None => {
                        return Err(source_err(ConfigError::ConfigMapNotFound(cm.name.clone())));
                    }
                }
            } else if let Some(secret) = &source.secret {
                let optional = secret.optional.unwrap_or(false);
                match lookups.secret(&secret.name).await.map_err(source_err)? {
                    Some(entries) => project_keys(
                        &entries,
                        secret.items.as_deref(),
                        default_mode,
                        optional,
                        |key| ConfigError::SecretKeyMissing {
                            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                            name: secret.name.clone(),
                            key,
                        },
                        &mut files,
                    )
                    .map_err(source_err)?,
                    None if optional => {}
                    None => {
                        return Err(source_err(ConfigError::SecretNotFound(secret.name.clone())));
                    }
                }
            } else if let Some(downward) = &source.downward_api {
                project_downward(
                    pod,
                    info,
                    downward.items.as_deref(),
                    default_mode,
                    &mut files,
                )
                .map_err(source_err)?;
            } else if source.service_account_token.is_some() {
                warn!(
                    volume = name,
                    "serviceAccountToken projections are not supported; the token file is left out"
                );
            }
        }
    } else {
        return Err(VolumeError::Unsupported {
            volume: name.to_string(),
            kind: volume_kind(volume),
        });
    }
    let dir = volume_dir(root_dir, uid, plugin, name);
    for path in files.keys() {
        check_relative(path).map_err(|message| VolumeError::Invalid {
            volume: name.to_string(),
            message,
        })?;
    }
    write_atomic(&dir, &files).map_err(io_err(name))?;
    Ok(HostVolume {
        path: dir,
        read_only: true,
    })
}

/// The name of a volume's type, for messages.
fn volume_kind(volume: &Volume) -> String {
    serde_json::to_value(volume)
        .ok()
        .and_then(|v| v.as_object()?.keys().find(|k| *k != "name").cloned())
        .unwrap_or_else(|| "this".to_string())
}

fn mode_of(mode: Option<i32>) -> u32 {
    mode.and_then(|m| u32::try_from(m).ok())
        .map_or(DEFAULT_MODE, |m| m & 0o7777)
}

/// Adds a ConfigMap's or Secret's entries to `files`: all keys, or only `items` (each to its
/// `path`, with its `mode`).
fn project_keys(
    entries: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
    missing: impl Fn(String) -> ConfigError,
    files: &mut BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), ConfigError> {
    match items {
        None | Some([]) => {
            for (key, value) in entries {
                files.insert(key.clone(), (value.clone(), default_mode));
            }
        }
        Some(items) => {
            for item in items {
                match entries.get(&item.key) {
                    Some(value) => {
                        let mode = item.mode.map_or(default_mode, |m| mode_of(Some(m)));
                        files.insert(item.path.clone(), (value.clone(), mode));
                    }
                    None if optional => {}
                    None => return Err(missing(item.key.clone())),
                }
            }
        }
    }
    Ok(())
}

/// Adds downward API files to `files`.
fn project_downward(
    pod: &Pod,
    info: &PodRuntimeInfo,
    items: Option<&[DownwardAPIVolumeFile]>,
    default_mode: u32,
    files: &mut BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), ConfigError> {
    for item in items.unwrap_or(&[]) {
        let value = if let Some(field) = &item.field_ref {
            env::field_value(field, pod, info)?
        } else if let Some(resource) = &item.resource_field_ref {
            let spec = pod.spec.as_ref();
            let name = resource.container_name.as_deref().unwrap_or("");
            let container = spec
                .into_iter()
                .flat_map(|s| s.containers.iter())
                .find(|c| c.name == name)
                .ok_or_else(|| {
                    ConfigError::Unsupported(format!(
                        "resourceFieldRef: container {name:?} not found in the pod"
                    ))
                })?;
            env::resource_value(resource, pod, container, info)?
        } else {
            String::new()
        };
        let mode = item.mode.map_or(default_mode, |m| mode_of(Some(m)));
        files.insert(item.path.clone(), (value.into_bytes(), mode));
    }
    Ok(())
}

/// A relative path without `..` elements (projected file paths, subPaths).
fn check_relative(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if path.is_empty() || p.is_absolute() {
        return Err(format!("path {path:?} must be relative and non-empty"));
    }
    if p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("path {path:?} must not contain '..' or '.'"));
    }
    if path.starts_with("..") {
        return Err(format!("path {path:?} must not start with '..'"));
    }
    Ok(())
}

/// kubelet's hostPath `type` checks.
pub fn check_host_path(path: &Path, kind: &str) -> Result<(), String> {
    let shown = path.display();
    let meta = std::fs::metadata(path);
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(format!("path {shown} exists but is not a directory")),
            Err(_) => {
                std::fs::create_dir_all(path)
                    .map_err(|e| format!("creating directory {shown}: {e}"))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| format!("chmod {shown}: {e}"))
            }
        },
        "Directory" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            _ => Err(format!(
                "hostPath type check failed: {shown} is not a directory"
            )),
        },
        "FileOrCreate" => match meta {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(format!("path {shown} exists but is not a file")),
            Err(_) => std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o644)))
                .map_err(|e| format!("creating file {shown}: {e}")),
        },
        "File" => match meta {
            Ok(m) if m.is_file() => Ok(()),
            _ => Err(format!("hostPath type check failed: {shown} is not a file")),
        },
        "Socket" => match meta {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            _ => Err(format!(
                "hostPath type check failed: {shown} is not a socket file"
            )),
        },
        "CharDevice" => match meta {
            Ok(m) if m.file_type().is_char_device() => Ok(()),
            _ => Err(format!(
                "hostPath type check failed: {shown} is not a character device"
            )),
        },
        "BlockDevice" => match meta {
            Ok(m) if m.file_type().is_block_device() => Ok(()),
            _ => Err(format!(
                "hostPath type check failed: {shown} is not a block device"
            )),
        },
        other => Err(format!("unknown hostPath type {other:?}")),
    }
}

/// Writes `files` (relative path → content and mode) into `dir` atomically: readers see the
/// old set or the new set, never a mix. Returns whether anything changed.
pub fn write_atomic(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data_link)
        && same_content(&dir.join(&current), files)
    {
        return Ok(false);
    }
    let old_target = std::fs::read_link(&data_link).ok();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut generation = format!("..{}.{:09}", stamp.as_secs(), stamp.subsec_nanos());
    while dir.join(&generation).exists() {
        generation.push('_');
    }
    let target = dir.join(&generation);
    std::fs::create_dir(&target)?;
    for (path, (content, mode)) in files {
        let file = target.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, content)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&generation, &tmp_link)?;
    std::fs::rename(&tmp_link, &data_link)?;
    // One symlink per top-level entry, into ..data.
    let mut top: Vec<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect();
    top.sort();
    top.dedup();
    for entry in &top {
        let link = dir.join(entry);
        let want = Path::new("..data").join(entry);
        if std::fs::read_link(&link).ok().as_deref() != Some(want.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&want, &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            if name != "..data"
                && name != generation
                && Some(Path::new(&name)) != old_target.as_deref()
            {
                // A leftover of an interrupted write.
                remove_any(&entry.path());
            }
            continue;
        }
        if !top.contains(&name) {
            remove_any(&entry.path());
        }
    }
    if let Some(old) = old_target
        && old.as_os_str() != generation.as_str()
    {
        remove_any(&dir.join(old));
    }
    Ok(true)
}

fn remove_any(path: &Path) {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    };
    if let Err(e) = result {
        warn!("removing {}: {e}", path.display());
    }
}

/// Whether `dir` holds exactly `files` with their modes.
fn same_content(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> bool {
    let mut found = Vec::new();
    if list_files(dir, dir, &mut found).is_err() {
        return false;
    }
    if found.len() != files.len() {
        return false;
    }
    files.iter().all(|(path, (content, mode))| {
        let file = dir.join(path);
        let Ok(meta) = std::fs::symlink_metadata(&file) else {
            return false;
        };
        meta.is_file()
            && meta.permissions().mode() & 0o7777 == *mode
            && std::fs::read(&file).is_ok_and(|c| c == *content)
    })
}

fn list_files(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            list_files(base, &path, out)?;
        } else {
            out.push(path.strip_prefix(base).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}

/// A container's `volumeMounts` as runtime mounts. `env` expands `subPathExpr`.
pub fn container_mounts(
    container: &Container,
    volumes: &HashMap<String, HostVolume>,
    env: &[(String, String)],
) -> Result<Vec<Mount>, String> {
    let mut mounts = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let volume = volumes.get(&vm.name).ok_or_else(|| {
            format!(
                "volumeMount {:?}: no volume of that name in the pod",
                vm.name
            )
        })?;
        let sub_path = match (&vm.sub_path, &vm.sub_path_expr) {
            (Some(p), _) if !p.is_empty() => Some(p.clone()),
            (_, Some(expr)) if !expr.is_empty() => {
                let expanded = env::expand_all(std::slice::from_ref(expr), env);
                expanded.into_iter().next()
            }
            _ => None,
        };
        let host_path = match sub_path {
            None => volume.path.clone(),
            Some(sub) => resolve_sub_path(&volume.path, &sub)
                .map_err(|e| format!("volumeMount {:?} subPath {sub:?}: {e}", vm.name))?,
        };
        mounts.push(Mount {
            host_path,
            container_path: vm.mount_path.clone(),
            read_only: vm.read_only.unwrap_or(false) || volume.read_only,
        });
    }
    Ok(mounts)
}

/// The host path of `sub` inside `volume`, created as a directory when missing, never
/// outside the volume (symlinks included).
fn resolve_sub_path(volume: &Path, sub: &str) -> Result<PathBuf, String> {
    check_relative(sub)?;
    let path = volume.join(sub);
    if std::fs::symlink_metadata(&path).is_err() {
        std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
    }
    let real = std::fs::canonicalize(&path).map_err(|e| e.to_string())?;
    let base = std::fs::canonicalize(volume).map_err(|e| e.to_string())?;
    if !real.starts_with(&base) {
        return Err("it resolves outside the volume".to_string());
    }
    Ok(real)
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn mount_tmpfs(dir: &Path, size: Option<u64>) -> io::Result<()> {
    let target = c_path(dir)?;
    let fstype = CString::new("tmpfs").map_err(io::Error::other)?;
    let options = match size {
        Some(bytes) => format!("mode=0777,size={bytes}"),
        None => "mode=0777".to_string(),
    };
    let data = CString::new(options).map_err(io::Error::other)?;
    // SAFETY: every pointer is a valid NUL-terminated string living across the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mount points in `/proc/self/mountinfo` (octal escapes decoded).
fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_mount_point(dir: &Path) -> bool {
    mount_points().iter().any(|m| m == dir)
}

/// Unmounts everything under the pod's directory and removes it.
pub fn teardown(root_dir: &Path, uid: &str) -> io::Result<()> {
    let dir = pod_dir(root_dir, uid);
    if !dir.exists() {
        return Ok(());
    }
    let mut mounted: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(&dir))
        .collect();
    // Deepest first.
    mounted.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounted {
        let target = c_path(&m)?;
        // SAFETY: target is a valid NUL-terminated path.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("unmounting {}: {e}", m.display()),
            ));
        }
    }
    std::fs::remove_dir_all(&dir)
}

/// Pod directories under `<root_dir>/pods` (their uids).
pub fn pod_dirs(root_dir: &Path) -> Vec<String> {
    std::fs::read_dir(root_dir.join("pods"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HostPathVolumeSource, VolumeMount};

    fn tmp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "keel-volumes-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn files(items: &[(&str, &str, u32)]) -> BTreeMap<String, (Vec<u8>, u32)> {
        items
            .iter()
            .map(|(p, c, m)| (p.to_string(), (c.as_bytes().to_vec(), *m)))
            .collect()
    }

    #[test]
    fn atomic_writer_projects_and_updates() {
        let dir = tmp("atomic");
        let _cleanup = Cleanup(dir.clone());
        let first = files(&[("a", "1", 0o644), ("sub/b", "2", 0o600)]);
        assert!(write_atomic(&dir, &first).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        let mode = std::fs::metadata(dir.join("sub/b"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );
        // Same content: nothing rewritten.
        assert!(!write_atomic(&dir, &first).unwrap());

        let second = files(&[("a", "changed", 0o644), ("c", "3", 0o644)]);
        assert!(write_atomic(&dir, &second).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "changed");
        assert_eq!(std::fs::read_to_string(dir.join("c")).unwrap(), "3");
        assert!(!dir.join("sub").exists(), "a removed key's link goes");
        let generations = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("..") && n != "..data"
            })
            .count();
        assert_eq!(generations, 1, "the old generation is removed");
    }

    #[test]
    fn relative_paths_only() {
        assert!(check_relative("a/b").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "..data", "./a"] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_path_types() {
        let dir = tmp("hostpath");
        let _cleanup = Cleanup(dir.clone());
        let file = dir.join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(check_host_path(&dir, "Directory").is_ok());
        assert!(check_host_path(&file, "Directory").is_err());
        assert!(check_host_path(&file, "File").is_ok());
        assert!(check_host_path(&dir, "File").is_err());
        assert!(check_host_path(&dir.join("missing"), "Directory").is_err());
        assert!(check_host_path(&dir.join("missing"), "").is_ok());
        assert!(check_host_path(&dir.join("new/dir"), "DirectoryOrCreate").is_ok());
        assert!(dir.join("new/dir").is_dir());
        assert!(check_host_path(&dir.join("newfile"), "FileOrCreate").is_ok());
        assert!(dir.join("newfile").is_file());
        assert!(check_host_path(&file, "DirectoryOrCreate").is_err());
        assert!(check_host_path(&dir, "Socket").is_err());
        assert!(check_host_path(Path::new("/dev/null"), "CharDevice").is_ok());
        assert!(check_host_path(&dir, "Bogus").is_err());
    }

    #[test]
    fn mounts_resolve_sub_paths_inside_the_volume() {
        let dir = tmp("mounts");
        let _cleanup = Cleanup(dir.clone());
        let volumes = HashMap::from([
            (
                "data".to_string(),
                HostVolume {
                    path: dir.clone(),
                    read_only: false,
                },
            ),
            (
                "cfg".to_string(),
                HostVolume {
                    path: dir.join("cfg"),
                    read_only: true,
                },
            ),
        ]);
        std::fs::create_dir_all(dir.join("cfg")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("escape")).unwrap();
        let mount = |name: &str, path: &str, sub: Option<&str>, expr: Option<&str>| VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            sub_path: sub.map(str::to_string),
            sub_path_expr: expr.map(str::to_string),
            ..Default::default()
        };
        let container = Container {
            name: "c".into(),
            volume_mounts: Some(vec![
                mount("data", "/data", None, None),
                mount("data", "/logs", None, Some("logs/$(POD_NAME)")),
                mount("cfg", "/etc/app", None, None),
            ]),
            ..Default::default()
        };
        let env = vec![("POD_NAME".to_string(), "web-1".to_string())];
        let mounts = container_mounts(&container, &volumes, &env).unwrap();
        let real = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(mounts[0].host_path, dir);
        assert_eq!(mounts[1].host_path, real.join("logs/web-1"));
        assert!(real.join("logs/web-1").is_dir());
        assert!(!mounts[0].read_only);
        assert!(mounts[2].read_only, "projected volumes are read-only");

        let escaping = Container {
            name: "c".into(),
            volume_mounts: Some(vec![mount("data", "/x", Some("escape"), None)]),
            ..Default::default()
        };
        assert!(container_mounts(&escaping, &volumes, &[]).is_err());
        let unknown = Container {
            name: "c".into(),
            volume_mounts: Some(vec![mount("nope", "/x", None, None)]),
            ..Default::default()
        };
        assert!(container_mounts(&unknown, &volumes, &[]).is_err());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\"), "/x\\");
    }

    #[test]
    fn unsupported_volume_kinds_are_named() {
        let v = Volume {
            name: "v".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/x".into(),
                type_: None,
            }),
            ..Default::default()
        };
        assert_eq!(volume_kind(&v), "hostPath");
    }
}
