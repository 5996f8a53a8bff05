//! Wire types and request validation of the SFS Turbo HPC-cache API: shares,
//! backend targets ("interworking directories"), import/export tasks and jobs.
//!
//! Request bodies are validated from the raw JSON value instead of through
//! serde's derive so that every rejection names the offending field
//! (`obs.attributes.file_mode`) and says what is wrong; the API answers a
//! [`ValidationError`] with `SFS.TURBO.0001` / 400. Messages never echo the
//! rejected value: it may be a megabyte long or contain control characters.
//!
//! The serde impls of the request types only read and write the shape (for
//! storage and tests); untrusted bodies go through the `from_json` functions.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDateTime};
use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

/// A request field that breaks a rule of the API.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Dotted path of the field (`obs.policy.auto_export_policy.events[1]`),
    /// `body` for the request body itself, or the query parameter name.
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError { field: field.into(), message: message.into() }
    }
}

/// An enum whose values travel as fixed strings; parsing is exact and case-sensitive.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $wire:literal,)+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in the order the API documents them.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The exact string on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }

            /// The value whose wire string is exactly `s`.
            pub fn from_wire(s: &str) -> Option<Self> {
                match s {
                    $($wire => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// Like [`Self::from_wire`], for a request field or query parameter
            /// named `field`; the error lists the accepted values.
            pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
                Self::from_wire(s).ok_or_else(|| {
                    ValidationError::new(field, format!("must be one of {}", [$($wire,)+].join(", ")))
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::from_wire(&s).ok_or_else(|| de::Error::unknown_variant(&s, &[$($wire,)+]))
            }
        }
    };
}

wire_enum! {
    /// What an HPC-cache task does (see DESIGN.md for each).
    pub enum HpcTaskType {
        /// Object metadata plus the POSIX attributes an earlier export stored.
        Import = "import",
        /// Object name, size and mtime only; attributes from defaults.
        ImportMetadata = "import_metadata",
        /// Metadata and data.
        Preload = "preload",
        /// Files created or modified in the directory go to the bucket.
        Export = "export",
    }
}

wire_enum! {
    /// State of an HPC-cache task.
    pub enum HpcTaskStatus {
        Doing = "DOING",
        Success = "SUCCESS",
        Fail = "FAIL",
        /// Cancelled and being removed.
        Deleting = "DELETING",
    }
}

wire_enum! {
    /// State of a backend target.
    pub enum TargetLifecycle {
        Creating = "CREATING",
        Available = "AVAILABLE",
        /// The bucket cannot be used as configured (see `failure_details`).
        Misconfigured = "MISCONFIGURED",
        Deleting = "DELETING",
        Failed = "FAILED",
    }
}

wire_enum! {
    /// State of an asynchronous control-plane job.
    pub enum JobStatus {
        Waiting = "waiting",
        Running = "running",
        Success = "success",
        Failed = "failed",
    }
}

wire_enum! {
    /// What an asynchronous control-plane job does.
    pub enum JobType {
        CreateShare = "create_share",
        DeleteShare = "delete_share",
        ExtendShare = "extend_share",
        CreateObsTarget = "create_obs_target",
        DeleteObsTarget = "delete_obs_target",
    }
}

wire_enum! {
    /// State of a share. The codes travel as JSON strings (`"status": "200"`),
    /// as the SDK's `ShareInfo.status: str` expects.
    pub enum ShareStatus {
        Creating = "100",
        Active = "200",
        Failed = "300",
        CreateFailed = "303",
        Deleted = "400",
    }
}

wire_enum! {
    /// Sub-state of a share while it is being expanded, a JSON string like [`ShareStatus`].
    pub enum ShareSubStatus {
        Expanding = "121",
        Expanded = "221",
        ExpandFailed = "321",
    }
}

wire_enum! {
    /// A change that the auto-export policy exports without a task.
    pub enum AutoExportEvent {
        /// Files created in the directory (and later changes to them).
        New = "NEW",
        /// Imported files changed in the directory.
        Changed = "CHANGED",
        /// Files deleted in the directory; only objects ferry wrote are deleted.
        Deleted = "DELETED",
    }
}

impl ShareStatus {
    /// The numeric code (`200` for [`ShareStatus::Active`]).
    pub fn code(self) -> u16 {
        self.as_str().parse().expect("share status codes are numeric")
    }
}

/// Permission bits written as three octal digits in a decimal integer, the
/// way the API spells `file_mode`/`dir_mode`: `750` means `0o750`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OctalMode(u32);

impl OctalMode {
    /// Accepts 0..=777 where every decimal digit is 0..=7 (so 778 and 800 are refused).
    pub fn from_wire(value: u64) -> Option<Self> {
        if value > 777 {
            return None;
        }
        let digits = [value / 100, value / 10 % 10, value % 10];
        if digits.iter().any(|&d| d > 7) {
            return None;
        }
        let bits = digits.iter().fold(0, |acc, &d| acc * 8 + d as u32);
        Some(OctalMode(bits))
    }

    /// The permission bits (`0o750`).
    pub fn bits(self) -> u32 {
        self.0
    }

    /// The decimal integer on the wire (`750`).
    pub fn wire(self) -> u32 {
        (self.0 >> 6) * 100 + (self.0 >> 3 & 7) * 10 + (self.0 & 7)
    }
}

impl Serialize for OctalMode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.wire())
    }
}

impl<'de> Deserialize<'de> for OctalMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u64::deserialize(deserializer)?;
        OctalMode::from_wire(value).ok_or_else(|| de::Error::custom(MODE_RULE))
    }
}

const MODE_RULE: &str = "must be an integer from 0 to 777 whose digits are 0 to 7";

/// Largest uid/gid the API accepts (2^32 - 2; 2^32 - 1 means "no id" to the kernel).
pub const MAX_ID: u32 = u32::MAX - 1;

/// POSIX attributes given to imported entries (`ObsTargetAttributes`): on a
/// target as its default, on an import task to override the target's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetAttributes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<OctalMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir_mode: Option<OctalMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// Which changes are exported without a task, and which object names they concern.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoExportPolicy {
    /// Distinct events in the order given; empty means no auto-export.
    #[serde(default)]
    pub events: Vec<AutoExportEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
}

/// A target's `policy` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_export_policy: Option<AutoExportPolicy>,
}

/// The bucket side of a target (`ObsDataRepository`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObsDataRepository {
    pub bucket: String,
    /// Must match an endpoint of the server's configuration; checked by the API.
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<TargetPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<TargetAttributes>,
}

/// Body of `POST /shares/{share_id}/targets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTargetRequest {
    /// Name of the new top-level directory of the share linked to the bucket.
    pub file_system_path: String,
    pub obs: ObsDataRepository,
}

/// Body of `POST /{share_id}/hpc-cache/task` (seed 002).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateHpcTaskRequest {
    #[serde(rename = "type")]
    pub task_type: HpcTaskType,
    /// The target's `file_system_path`.
    pub src_target: String,
    /// Relative to the bucket for imports, to the target directory for
    /// exports; `None` means everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_prefix: Option<String>,
    /// Always equal to `src_target`.
    pub dest_target: String,
    /// Always equal to `src_prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<TargetAttributes>,
}

/// Task fields only the server sets: a create body naming one is refused
/// (its sender expects it to take effect, and it would not).
pub const TASK_READ_ONLY_FIELDS: &[&str] =
    &["task_id", "status", "start_time", "end_time", "message", "progress"];
/// Target fields only the server sets.
pub const TARGET_READ_ONLY_FIELDS: &[&str] = &["target_id", "lifecycle", "creation_time", "failure_details"];
/// Share fields only the server sets.
pub const SHARE_READ_ONLY_FIELDS: &[&str] =
    &["id", "status", "sub_status", "created_at", "export_location", "avail_capacity", "action_progress"];

/// Refuse the `read_only` fields in `object` (named `path` in errors, empty
/// for the body itself). Unknown fields stay ignored, as API.md says.
pub fn refuse_read_only(
    object: &Map<String, Value>,
    path: &str,
    read_only: &[&str],
) -> Result<(), ValidationError> {
    JsonFields { map: object, path: path.to_owned() }.refuse_read_only(read_only)
}

/// Longest target directory name, in characters.
pub const MAX_TARGET_NAME_CHARS: usize = 63;
/// Longest task prefix, in characters.
pub const MAX_PREFIX_CHARS: usize = 1024;
/// Characters a task prefix may not contain (besides control characters).
pub const PREFIX_FORBIDDEN_CHARS: &[char] = &['\\', ':', '*', '?', '"', '<', '>', '|'];
/// Longest auto-export prefix or suffix, in characters.
const MAX_FILTER_CHARS: usize = 1024;
/// Longest endpoint, in characters (a host name is at most 253).
const MAX_ENDPOINT_CHARS: usize = 255;

impl CreateHpcTaskRequest {
    /// Validate a create-task body.
    pub fn from_json(body: &Value) -> Result<Self, ValidationError> {
        let fields = JsonFields::body(body)?;
        fields.refuse_read_only(TASK_READ_ONLY_FIELDS)?;
        let task_type = HpcTaskType::parse(&fields.name("type"), fields.required_str("type")?)?;

        let src_target = fields.required_str("src_target")?;
        check_target_name(&fields.name("src_target"), src_target)?;
        let src_prefix = fields.optional_str("src_prefix")?;
        if let Some(prefix) = src_prefix {
            check_task_prefix(&fields.name("src_prefix"), prefix)?;
        }
        let dest_target = fields.required_str("dest_target")?;
        if dest_target != src_target {
            return Err(ValidationError::new(fields.name("dest_target"), "must equal src_target"));
        }
        let dest_prefix = fields.optional_str("dest_prefix")?;
        if dest_prefix != src_prefix {
            return Err(ValidationError::new(fields.name("dest_prefix"), "must equal src_prefix"));
        }
        let attributes = match fields.optional_object("attributes")? {
            Some(attributes) => Some(TargetAttributes::from_fields(&attributes)?),
            None => None,
        };
        Ok(CreateHpcTaskRequest {
            task_type,
            src_target: src_target.to_owned(),
            src_prefix: src_prefix.map(str::to_owned),
            dest_target: dest_target.to_owned(),
            dest_prefix: dest_prefix.map(str::to_owned),
            attributes,
        })
    }
}

impl CreateTargetRequest {
    /// Validate a create-target body.
    pub fn from_json(body: &Value) -> Result<Self, ValidationError> {
        let fields = JsonFields::body(body)?;
        fields.refuse_read_only(TARGET_READ_ONLY_FIELDS)?;
        let file_system_path = fields.required_str("file_system_path")?;
        check_target_name(&fields.name("file_system_path"), file_system_path)?;
        let obs = fields.required_object("obs")?;

        let bucket = obs.required_str("bucket")?;
        check_bucket_name(&obs.name("bucket"), bucket)?;
        let endpoint = obs.required_str("endpoint")?;
        check_endpoint(&obs.name("endpoint"), endpoint)?;
        let policy = match obs.optional_object("policy")? {
            Some(policy) => Some(TargetPolicy::from_fields(&policy)?),
            None => None,
        };
        let attributes = match obs.optional_object("attributes")? {
            Some(attributes) => Some(TargetAttributes::from_fields(&attributes)?),
            None => None,
        };
        Ok(CreateTargetRequest {
            file_system_path: file_system_path.to_owned(),
            obs: ObsDataRepository {
                bucket: bucket.to_owned(),
                endpoint: endpoint.to_owned(),
                policy,
                attributes,
            },
        })
    }
}

impl TargetAttributes {
    /// Validate the body of `PUT …/targets/{target_id}/attributes`: `{"attributes":{…}}`.
    pub fn from_update_json(body: &Value) -> Result<Self, ValidationError> {
        let fields = JsonFields::body(body)?;
        TargetAttributes::from_fields(&fields.required_object("attributes")?)
    }

    fn from_fields(fields: &JsonFields<'_>) -> Result<Self, ValidationError> {
        let mode = |key: &str| -> Result<Option<OctalMode>, ValidationError> {
            let Some(value) = fields.present(key)? else { return Ok(None) };
            value
                .as_u64()
                .and_then(OctalMode::from_wire)
                .map(Some)
                .ok_or_else(|| ValidationError::new(fields.name(key), type_message(MODE_RULE, value)))
        };
        let id = |key: &str| -> Result<Option<u32>, ValidationError> {
            let Some(value) = fields.present(key)? else { return Ok(None) };
            let rule = format!("must be an integer from 0 to {MAX_ID}");
            value
                .as_u64()
                .filter(|&id| id <= u64::from(MAX_ID))
                .map(|id| Some(id as u32))
                .ok_or_else(|| ValidationError::new(fields.name(key), type_message(&rule, value)))
        };
        Ok(TargetAttributes {
            file_mode: mode("file_mode")?,
            dir_mode: mode("dir_mode")?,
            uid: id("uid")?,
            gid: id("gid")?,
        })
    }
}

impl TargetPolicy {
    /// Validate the body of `PUT …/targets/{target_id}/policy`: `{"policy":{…}}`.
    pub fn from_update_json(body: &Value) -> Result<Self, ValidationError> {
        let fields = JsonFields::body(body)?;
        TargetPolicy::from_fields(&fields.required_object("policy")?)
    }

    fn from_fields(fields: &JsonFields<'_>) -> Result<Self, ValidationError> {
        let auto_export_policy = match fields.optional_object("auto_export_policy")? {
            Some(policy) => Some(AutoExportPolicy::from_fields(&policy)?),
            None => None,
        };
        Ok(TargetPolicy { auto_export_policy })
    }
}

impl AutoExportPolicy {
    fn from_fields(fields: &JsonFields<'_>) -> Result<Self, ValidationError> {
        let mut events = Vec::new();
        if let Some(value) = fields.present("events")? {
            let Value::Array(items) = value else {
                return Err(ValidationError::new(
                    fields.name("events"),
                    type_message("must be an array of strings", value),
                ));
            };
            for (i, item) in items.iter().enumerate() {
                let field = format!("{}[{i}]", fields.name("events"));
                let Value::String(item) = item else {
                    return Err(ValidationError::new(
                        field,
                        format!("must be a string, got {}", json_kind(item)),
                    ));
                };
                let event = AutoExportEvent::parse(&field, item)?;
                if !events.contains(&event) {
                    events.push(event);
                }
            }
        }
        let filter = |key: &str| -> Result<Option<String>, ValidationError> {
            let Some(value) = fields.optional_str(key)? else { return Ok(None) };
            let field = fields.name(key);
            check_length(&field, value, 1, MAX_FILTER_CHARS)?;
            check_no_control(&field, value)?;
            Ok(Some(value.to_owned()))
        };
        Ok(AutoExportPolicy { events, prefix: filter("prefix")?, suffix: filter("suffix")? })
    }
}

/// Check a target directory name (`file_system_path`, `src_target`): one
/// directory directly under the share root.
pub fn check_target_name(field: &str, name: &str) -> Result<(), ValidationError> {
    check_length(field, name, 1, MAX_TARGET_NAME_CHARS)?;
    check_no_control(field, name)?;
    if name == "." || name == ".." {
        return Err(ValidationError::new(field, "must not be '.' or '..'"));
    }
    if name.contains('/') {
        return Err(ValidationError::new(field, "must be a single directory name without '/'"));
    }
    Ok(())
}

/// Check a task prefix (`src_prefix`): the seed's rules (1 to 1024
/// characters, none of `\ : * ? " < > |`, not starting or ending with `.`)
/// plus ferry's own, which keep it inside the target: relative, no `.`/`..`
/// or empty components (a trailing `/` is fine), no control characters.
///
/// Percent signs are ordinary characters: nothing decodes a prefix, so
/// `%2e%2e%2f` is a nine-character name, not `../`.
pub fn check_task_prefix(field: &str, prefix: &str) -> Result<(), ValidationError> {
    check_length(field, prefix, 1, MAX_PREFIX_CHARS)?;
    check_no_control(field, prefix)?;
    if prefix.contains(PREFIX_FORBIDDEN_CHARS) {
        return Err(ValidationError::new(field, r#"must not contain any of \ : * ? " < > |"#));
    }
    if prefix.starts_with('.') || prefix.ends_with('.') {
        return Err(ValidationError::new(field, "must not start or end with '.'"));
    }
    if prefix.starts_with('/') {
        return Err(ValidationError::new(field, "must be relative (no leading '/')"));
    }
    let path = prefix.strip_suffix('/').unwrap_or(prefix);
    for component in path.split('/') {
        match component {
            "" => return Err(ValidationError::new(field, "must not contain '//'")),
            "." | ".." => return Err(ValidationError::new(field, "must not contain '.' or '..' components")),
            _ => {}
        }
    }
    Ok(())
}

/// Bucket names as OBS and S3 accept them: 3 to 63 of `a-z 0-9 . -`,
/// starting and ending with a letter or digit, no `..`, not an IPv4 address.
fn check_bucket_name(field: &str, bucket: &str) -> Result<(), ValidationError> {
    let rule = "must be 3 to 63 lower-case letters, digits, '.' or '-', \
                starting and ending with a letter or digit";
    let valid_chars =
        bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let alnum_ends = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !(3..=63).contains(&bucket.len()) || !valid_chars || !alnum_ends {
        return Err(ValidationError::new(field, rule));
    }
    if bucket.contains("..") || bucket.contains(".-") || bucket.contains("-.") {
        return Err(ValidationError::new(field, "must not contain '..', '.-' or '-.'"));
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(ValidationError::new(field, "must not be an IP address"));
    }
    Ok(())
}

/// An endpoint is only checked for shape here; the API matches it against
/// the configured endpoints so that no request picks the host ferry connects to.
fn check_endpoint(field: &str, endpoint: &str) -> Result<(), ValidationError> {
    check_length(field, endpoint, 1, MAX_ENDPOINT_CHARS)?;
    if endpoint.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ValidationError::new(field, "must not contain whitespace or control characters"));
    }
    Ok(())
}

fn check_length(field: &str, value: &str, min: usize, max: usize) -> Result<(), ValidationError> {
    // Counting stops past `max`: a megabyte string costs no more than a short one.
    let chars = value.chars().take(max + 1).count();
    if chars < min || chars > max {
        return Err(ValidationError::new(field, format!("must be {min} to {max} characters long")));
    }
    Ok(())
}

fn check_no_control(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(field, "must not contain NUL or control characters"));
    }
    Ok(())
}

/// `rule` of a numeric field, plus what was sent when it is not a number.
fn type_message(rule: &str, value: &Value) -> String {
    match value {
        Value::Number(_) => rule.to_owned(),
        other => format!("{rule}, got {}", json_kind(other)),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON object read field by field; `path` names it in errors.
struct JsonFields<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> JsonFields<'a> {
    /// The request body, which must be an object.
    fn body(value: &'a Value) -> Result<Self, ValidationError> {
        match value {
            Value::Object(map) => Ok(JsonFields { map, path: String::new() }),
            other => {
                Err(ValidationError::new("body", format!("must be a JSON object, got {}", json_kind(other))))
            }
        }
    }

    /// The name of field `key` of this object in errors.
    fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value of `key`: `None` when absent; `null` is refused because the
    /// SDK leaves unset fields out instead of sending `null`.
    fn present(&self, key: &str) -> Result<Option<&'a Value>, ValidationError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Null) => Err(ValidationError::new(self.name(key), "must not be null")),
            Some(value) => Ok(Some(value)),
        }
    }

    fn optional_str(&self, key: &str) -> Result<Option<&'a str>, ValidationError> {
        match self.present(key)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(ValidationError::new(
                self.name(key),
                format!("must be a string, got {}", json_kind(other)),
            )),
        }
    }

    fn required_str(&self, key: &str) -> Result<&'a str, ValidationError> {
        self.require(key)?;
        Ok(self.optional_str(key)?.expect("present"))
    }

    fn optional_object(&self, key: &str) -> Result<Option<JsonFields<'a>>, ValidationError> {
        match self.present(key)? {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(JsonFields { map, path: self.name(key) })),
            Some(other) => Err(ValidationError::new(
                self.name(key),
                format!("must be an object, got {}", json_kind(other)),
            )),
        }
    }

    fn required_object(&self, key: &str) -> Result<JsonFields<'a>, ValidationError> {
        self.require(key)?;
        Ok(self.optional_object(key)?.expect("present"))
    }

    fn refuse_read_only(&self, read_only: &[&str]) -> Result<(), ValidationError> {
        match read_only.iter().find(|key| self.map.contains_key(**key)) {
            Some(key) => Err(ValidationError::new(self.name(key), "is read-only (set by the server)")),
            None => Ok(()),
        }
    }

    fn require(&self, key: &str) -> Result<(), ValidationError> {
        if self.map.contains_key(key) {
            Ok(())
        } else {
            Err(ValidationError::new(self.name(key), "is required"))
        }
    }
}

/// Default and largest page size of list routes.
pub const MAX_LIMIT: u32 = 1000;

/// `offset`/`limit` of a list route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    /// Entries to skip; at most `i64::MAX` so that it fits a SQL `OFFSET`.
    pub offset: u64,
    /// 1..=[`MAX_LIMIT`].
    pub limit: u32,
}

impl Default for Paging {
    fn default() -> Self {
        Paging { offset: 0, limit: MAX_LIMIT }
    }
}

impl Paging {
    /// Parse the raw (already percent-decoded) `offset` and `limit` query
    /// values; absent means the default. Only plain decimal digits are accepted.
    pub fn from_query(offset: Option<&str>, limit: Option<&str>) -> Result<Self, ValidationError> {
        let mut paging = Paging::default();
        if let Some(raw) = offset {
            paging.offset = parse_decimal(raw)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| ValidationError::new("offset", "must be an integer from 0"))?;
        }
        if let Some(raw) = limit {
            paging.limit = parse_decimal(raw)
                .filter(|n| (1..=u64::from(MAX_LIMIT)).contains(n))
                .map(|n| n as u32)
                .ok_or_else(|| {
                    ValidationError::new("limit", format!("must be an integer from 1 to {MAX_LIMIT}"))
                })?;
        }
        Ok(paging)
    }
}

fn parse_decimal(raw: &str) -> Option<u64> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

const TASK_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S";
const JOB_TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// A task time, `YYYY-MM-DDTHH:MM:SS` in UTC without a zone; `None` outside
/// the years 0 to 9999, which the format cannot express.
pub fn format_task_time(unix_secs: i64) -> Option<String> {
    format_utc(unix_secs, TASK_TIME_FORMAT)
}

/// A job time, `YYYY-MM-DD HH:MM:SS` in UTC; `None` outside the years 0 to 9999.
pub fn format_job_time(unix_secs: i64) -> Option<String> {
    format_utc(unix_secs, JOB_TIME_FORMAT)
}

/// Parse a task time (the list filters `start_time`/`end_time`) into Unix seconds.
pub fn parse_task_time(s: &str) -> Option<i64> {
    // chrono accepts one-digit months and the like; the format has fixed widths.
    if s.len() != 19 {
        return None;
    }
    NaiveDateTime::parse_from_str(s, TASK_TIME_FORMAT).ok().map(|t| t.and_utc().timestamp())
}

fn format_utc(unix_secs: i64, format: &str) -> Option<String> {
    let time = DateTime::from_timestamp(unix_secs, 0)?;
    (0..=9999).contains(&time.year()).then(|| time.format(format).to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn task_body(prefix: Value) -> Value {
        json!({
            "type": "import",
            "src_target": "dir",
            "src_prefix": prefix.clone(),
            "dest_target": "dir",
            "dest_prefix": prefix,
        })
    }

    fn task_error(body: Value) -> ValidationError {
        CreateHpcTaskRequest::from_json(&body).expect_err("must be refused")
    }

    fn target_body(attributes: Value) -> Value {
        json!({
            "file_system_path": "data",
            "obs": { "bucket": "my-bucket", "endpoint": "obs.example.com", "attributes": attributes },
        })
    }

    fn target_error(body: Value) -> ValidationError {
        CreateTargetRequest::from_json(&body).expect_err("must be refused")
    }

    #[test]
    fn enums_use_the_exact_wire_strings() {
        let cases: Vec<(Value, &[&str])> = vec![
            (json!(HpcTaskType::ALL), &["import", "import_metadata", "preload", "export"]),
            (json!(HpcTaskStatus::ALL), &["DOING", "SUCCESS", "FAIL", "DELETING"]),
            (json!(TargetLifecycle::ALL), &["CREATING", "AVAILABLE", "MISCONFIGURED", "DELETING", "FAILED"]),
            (json!(JobStatus::ALL), &["waiting", "running", "success", "failed"]),
            (
                json!(JobType::ALL),
                &["create_share", "delete_share", "extend_share", "create_obs_target", "delete_obs_target"],
            ),
            (json!(ShareStatus::ALL), &["100", "200", "300", "303", "400"]),
            (json!(ShareSubStatus::ALL), &["121", "221", "321"]),
            (json!(AutoExportEvent::ALL), &["NEW", "CHANGED", "DELETED"]),
        ];
        for (got, want) in cases {
            assert_eq!(got, json!(want));
        }
        assert_eq!(ShareStatus::Active.code(), 200);
        assert_eq!(ShareStatus::CreateFailed.code(), 303);
        let parsed: HpcTaskType = serde_json::from_value(json!("import_metadata")).unwrap();
        assert_eq!(parsed, HpcTaskType::ImportMetadata);
        assert!(serde_json::from_value::<HpcTaskType>(json!("IMPORT")).is_err());
        assert!(serde_json::from_value::<ShareStatus>(json!(200)).is_err());
        assert_eq!(HpcTaskStatus::from_wire("doing"), None);
        let err = HpcTaskStatus::parse("status", "doing").unwrap_err();
        assert_eq!(err, ValidationError::new("status", "must be one of DOING, SUCCESS, FAIL, DELETING"));
    }

    #[test]
    fn seed_examples_are_accepted() {
        let body = json!({
            "type": "preload",
            "src_target": "sfs-link-directory",
            "src_prefix": "input/datasets/",
            "dest_target": "sfs-link-directory",
            "dest_prefix": "input/datasets/",
            "attributes": { "file_mode": 640, "dir_mode": 750, "uid": 0, "gid": 0 },
            "unknown_field": [1, 2, 3],
        });
        let request = CreateHpcTaskRequest::from_json(&body).unwrap();
        assert_eq!(request.task_type, HpcTaskType::Preload);
        assert_eq!(request.src_prefix.as_deref(), Some("input/datasets/"));
        let attributes = request.attributes.unwrap();
        assert_eq!(attributes.file_mode.unwrap().bits(), 0o640);
        assert_eq!(attributes.dir_mode.unwrap().bits(), 0o750);
        assert_eq!((attributes.uid, attributes.gid), (Some(0), Some(0)));
        // The typed request reads back from the same JSON through serde.
        let via_serde: CreateHpcTaskRequest = serde_json::from_value(body).unwrap();
        assert_eq!(via_serde, request);
        assert_eq!(json!(attributes), json!({ "file_mode": 640, "dir_mode": 750, "uid": 0, "gid": 0 }));

        // Prefixes are optional: without them a task covers the whole target.
        let whole = json!({ "type": "export", "src_target": "d", "dest_target": "d" });
        let request = CreateHpcTaskRequest::from_json(&whole).unwrap();
        assert_eq!((request.src_prefix, request.dest_prefix, request.attributes), (None, None, None));
    }

    #[test]
    fn task_type_must_be_a_known_lower_case_string() {
        for value in ["IMPORT", "Import", "", "delete", "import "] {
            let mut body = task_body(json!("a/"));
            body["type"] = json!(value);
            let err = task_error(body);
            assert_eq!(err.field, "type", "{value:?}");
            assert!(err.message.contains("import_metadata"), "{err}");
        }
        for value in [json!(null), json!(1), json!(["import"])] {
            let mut body = task_body(json!("a/"));
            body["type"] = value;
            assert_eq!(task_error(body).field, "type");
        }
        let mut body = task_body(json!("a/"));
        body.as_object_mut().unwrap().remove("type");
        assert_eq!(task_error(body), ValidationError::new("type", "is required"));
    }

    #[test]
    fn prefixes_that_leave_the_target_or_break_the_seed_rules_are_refused() {
        let long = "a".repeat(MAX_PREFIX_CHARS + 1);
        let huge = "a".repeat(1 << 20);
        let cases = [
            "../",
            "a/../../etc",
            "/etc/passwd",
            "..\\",
            "./",
            ".hidden",
            "trailing.",
            "a//b",
            "a/./b",
            "a/..",
            "/",
            "a\0b",
            "a\u{1}b",
            "a\nb",
            "a\u{7f}b",
            "a\u{85}b",
            "c:/x",
            "a*",
            "a?",
            "a\"b",
            "<a>",
            "a|b",
            long.as_str(),
            huge.as_str(),
            "",
        ];
        for prefix in cases {
            let err = task_error(task_body(json!(prefix)));
            assert_eq!(err.field, "src_prefix", "{prefix:?}: {err}");
        }
        let err = task_error(task_body(json!(huge)));
        assert!(err.message.len() < 100, "the message does not echo the value");
    }

    #[test]
    fn prefix_of_wrong_json_type_is_refused_naming_the_field() {
        for (value, message) in [
            (json!(null), "must not be null"),
            (json!(42), "must be a string, got a number"),
            (json!(["a"]), "must be a string, got an array"),
            (json!({ "a": 1 }), "must be a string, got an object"),
            (json!(true), "must be a string, got a boolean"),
        ] {
            assert_eq!(task_error(task_body(value)), ValidationError::new("src_prefix", message));
        }
    }

    #[test]
    fn ordinary_prefixes_are_accepted() {
        let longest = "a".repeat(MAX_PREFIX_CHARS);
        // `%2e%2e%2f` stays the literal name "%2e%2e%2f": prefixes are never
        // percent-decoded, and '%' is a legal character in keys and file names.
        for prefix in [
            "a",
            "input/datasets/",
            "a/.hidden/b",
            "a..b",
            "%2e%2e%2f",
            "data/img_",
            "é/日本",
            "with space",
            longest.as_str(),
        ] {
            let request = CreateHpcTaskRequest::from_json(&task_body(json!(prefix))).unwrap();
            assert_eq!(request.src_prefix.as_deref(), Some(prefix));
        }
        // 1024 characters, more than 1024 bytes.
        let wide = "é".repeat(MAX_PREFIX_CHARS / 4);
        assert!(CreateHpcTaskRequest::from_json(&task_body(json!(wide))).is_ok());
        let too_wide = "é".repeat(MAX_PREFIX_CHARS + 1);
        assert_eq!(task_error(task_body(json!(too_wide))).field, "src_prefix");
    }

    #[test]
    fn destination_must_repeat_the_source() {
        let mut body = task_body(json!("a/"));
        body["dest_target"] = json!("other");
        assert_eq!(task_error(body), ValidationError::new("dest_target", "must equal src_target"));

        let mut body = task_body(json!("a/"));
        body["dest_prefix"] = json!("b/");
        assert_eq!(task_error(body), ValidationError::new("dest_prefix", "must equal src_prefix"));

        let mut body = task_body(json!("a/"));
        body.as_object_mut().unwrap().remove("dest_prefix");
        assert_eq!(task_error(body).field, "dest_prefix");

        let mut body = task_body(json!("a/"));
        body.as_object_mut().unwrap().remove("dest_target");
        assert_eq!(task_error(body), ValidationError::new("dest_target", "is required"));

        let mut body = task_body(json!("a/"));
        body["src_target"] = json!("..");
        body["dest_target"] = json!("..");
        assert_eq!(task_error(body).field, "src_target");
    }

    #[test]
    fn read_only_fields_are_refused_unknown_ones_ignored() {
        for key in TASK_READ_ONLY_FIELDS {
            let mut body = task_body(json!("a/"));
            body[*key] = json!("SUCCESS");
            assert_eq!(task_error(body), ValidationError::new(*key, "is read-only (set by the server)"));
        }
        for key in TARGET_READ_ONLY_FIELDS {
            let mut body = target_body(json!({}));
            body[*key] = json!("AVAILABLE");
            assert_eq!(target_error(body).field, *key);
        }
        let mut body = task_body(json!("a/"));
        body["comment"] = json!({ "status": "SUCCESS" });
        assert!(CreateHpcTaskRequest::from_json(&body).is_ok(), "unknown fields are ignored");
        let share = json!({ "name": "n", "status": "200" });
        let err = refuse_read_only(share.as_object().unwrap(), "share", SHARE_READ_ONLY_FIELDS).unwrap_err();
        assert_eq!(err.field, "share.status");
    }

    #[test]
    fn body_must_be_an_object() {
        for body in [json!(null), json!([]), json!("x"), json!(1)] {
            assert_eq!(task_error(body.clone()).field, "body");
            assert_eq!(target_error(body).field, "body");
        }
    }

    #[test]
    fn target_names_are_one_short_directory_name() {
        let longest = "n".repeat(MAX_TARGET_NAME_CHARS);
        let too_long = "n".repeat(MAX_TARGET_NAME_CHARS + 1);
        for bad in [".", "..", "a/b", "/", "/a", "a/", "", "a\0", "a\tb", too_long.as_str()] {
            let mut body = target_body(json!({}));
            body["file_system_path"] = json!(bad);
            assert_eq!(target_error(body).field, "file_system_path", "{bad:?}");
        }
        for bad in [json!(null), json!(7), json!(["a"])] {
            let mut body = target_body(json!({}));
            body["file_system_path"] = bad;
            assert_eq!(target_error(body).field, "file_system_path");
        }
        for good in ["data", ".cache", "a.b", "日本語", longest.as_str()] {
            let mut body = target_body(json!({}));
            body["file_system_path"] = json!(good);
            let request = CreateTargetRequest::from_json(&body).unwrap();
            assert_eq!(request.file_system_path, good);
        }
        let wide = "日".repeat(MAX_TARGET_NAME_CHARS);
        assert_eq!(check_target_name("f", &wide), Ok(()));
    }

    #[test]
    fn modes_are_octal_digits_written_in_decimal() {
        for (wire, bits) in [(0, 0), (7, 0o7), (640, 0o640), (755, 0o755), (777, 0o777), (70, 0o70)] {
            let mode = OctalMode::from_wire(wire).unwrap();
            assert_eq!((mode.bits(), u64::from(mode.wire())), (bits, wire));
        }
        for wire in [778, 780, 800, 1000, 8, 68, u64::MAX] {
            assert_eq!(OctalMode::from_wire(wire), None, "{wire}");
        }
        for key in ["file_mode", "dir_mode"] {
            for bad in
                [json!(778), json!(-1), json!("755"), json!(7.5), json!(640.0), json!(null), json!([7])]
            {
                let err = target_error(target_body(json!({ key: bad.clone() })));
                assert_eq!(err.field, format!("obs.attributes.{key}"), "{bad}");
            }
        }
        let err = target_error(target_body(json!({ "file_mode": "755" })));
        assert_eq!(err.message, format!("{MODE_RULE}, got a string"));
        assert!(serde_json::from_value::<OctalMode>(json!(778)).is_err());
        assert!(serde_json::from_value::<OctalMode>(json!("755")).is_err());
    }

    #[test]
    fn ids_stop_below_the_kernel_no_id_value() {
        let request = CreateTargetRequest::from_json(&target_body(json!({
            "uid": 4294967294u64, "gid": 0, "file_mode": 644, "dir_mode": 755,
        })))
        .unwrap();
        let attributes = request.obs.attributes.unwrap();
        assert_eq!((attributes.uid, attributes.gid), (Some(MAX_ID), Some(0)));
        for key in ["uid", "gid"] {
            for bad in [json!(4294967295u64), json!(-1), json!("0"), json!(1.5), json!(u64::MAX)] {
                let err = target_error(target_body(json!({ key: bad.clone() })));
                assert_eq!(err.field, format!("obs.attributes.{key}"), "{bad}");
            }
        }
        let mut task = task_body(json!("a/"));
        task["attributes"] = json!({ "uid": 4294967295u64 });
        assert_eq!(task_error(task).field, "attributes.uid");
    }

    #[test]
    fn target_request_with_policy_is_read_in_full() {
        let body = json!({
            "file_system_path": "sfs-link-directory",
            "obs": {
                "bucket": "bucket.name-1",
                "endpoint": "obs.cn-north-4.myhuaweicloud.com",
                "policy": { "auto_export_policy": {
                    "events": ["NEW", "CHANGED", "DELETED", "NEW"], "prefix": "out/", "suffix": ".ckpt",
                } },
                "attributes": { "file_mode": 640 },
            },
        });
        let request = CreateTargetRequest::from_json(&body).unwrap();
        let policy = request.obs.policy.as_ref().unwrap().auto_export_policy.as_ref().unwrap();
        assert_eq!(policy.events, AutoExportEvent::ALL);
        assert_eq!((policy.prefix.as_deref(), policy.suffix.as_deref()), (Some("out/"), Some(".ckpt")));
        assert_eq!(request.obs.attributes.unwrap().file_mode.unwrap().bits(), 0o640);
        let round_trip: CreateTargetRequest = serde_json::from_value(json!(request)).unwrap();
        assert_eq!(round_trip, request);

        let minimal = json!({ "file_system_path": "d", "obs": { "bucket": "abc", "endpoint": "e" } });
        let request = CreateTargetRequest::from_json(&minimal).unwrap();
        assert_eq!((request.obs.policy, request.obs.attributes), (None, None));
    }

    #[test]
    fn target_request_errors_name_the_nested_field() {
        let base = || json!({ "file_system_path": "d", "obs": { "bucket": "abc", "endpoint": "e" } });
        let mut cases: Vec<(Value, &str)> = Vec::new();
        let mut body = base();
        body.as_object_mut().unwrap().remove("obs");
        cases.push((body, "obs"));
        let mut body = base();
        body["obs"] = json!("abc");
        cases.push((body, "obs"));
        for bucket in [json!("AB"), json!("ab"), json!("-abc"), json!("a..b"), json!("192.168.0.1"), json!(1)]
        {
            let mut body = base();
            body["obs"]["bucket"] = bucket;
            cases.push((body, "obs.bucket"));
        }
        for endpoint in [json!(""), json!("a b"), json!("a\r\nb"), json!(null)] {
            let mut body = base();
            body["obs"]["endpoint"] = endpoint;
            cases.push((body, "obs.endpoint"));
        }
        let mut body = base();
        body["obs"]["policy"] = json!([]);
        cases.push((body, "obs.policy"));
        let mut body = base();
        body["obs"]["policy"] = json!({ "auto_export_policy": { "events": "NEW" } });
        cases.push((body, "obs.policy.auto_export_policy.events"));
        let mut body = base();
        body["obs"]["policy"] = json!({ "auto_export_policy": { "events": ["NEW", "new"] } });
        cases.push((body, "obs.policy.auto_export_policy.events[1]"));
        let mut body = base();
        body["obs"]["policy"] = json!({ "auto_export_policy": { "prefix": "a\0" } });
        cases.push((body, "obs.policy.auto_export_policy.prefix"));
        let mut body = base();
        body["obs"]["policy"] = json!({ "auto_export_policy": { "suffix": 3 } });
        cases.push((body, "obs.policy.auto_export_policy.suffix"));
        for (body, field) in cases {
            assert_eq!(target_error(body.clone()).field, field, "{body}");
        }
    }

    #[test]
    fn update_bodies_wrap_attributes_and_policy() {
        let attributes = TargetAttributes::from_update_json(&json!({ "attributes": { "uid": 5 } })).unwrap();
        assert_eq!(attributes.uid, Some(5));
        let err = TargetAttributes::from_update_json(&json!({ "uid": 5 })).unwrap_err();
        assert_eq!(err, ValidationError::new("attributes", "is required"));
        let err =
            TargetAttributes::from_update_json(&json!({ "attributes": { "dir_mode": 778 } })).unwrap_err();
        assert_eq!(err.field, "attributes.dir_mode");

        let policy = TargetPolicy::from_update_json(&json!({
            "policy": { "auto_export_policy": { "events": ["DELETED"] } }
        }))
        .unwrap();
        assert_eq!(policy.auto_export_policy.unwrap().events, [AutoExportEvent::Deleted]);
        let err = TargetPolicy::from_update_json(&json!({ "policy": null })).unwrap_err();
        assert_eq!(err, ValidationError::new("policy", "must not be null"));
    }

    #[test]
    fn paging_defaults_and_bounds() {
        assert_eq!(Paging::from_query(None, None), Ok(Paging { offset: 0, limit: 1000 }));
        assert_eq!(Paging::from_query(Some("20"), Some("1")), Ok(Paging { offset: 20, limit: 1 }));
        assert_eq!(Paging::from_query(Some("0"), Some("1000")), Ok(Paging { offset: 0, limit: 1000 }));
        let huge = i64::MAX.to_string();
        assert_eq!(Paging::from_query(Some(&huge), None).unwrap().offset, i64::MAX as u64);
        for limit in ["0", "-1", "1001", "9223372036854775808", "", "ten", "+5", " 5", "5.0", "1e3"] {
            let err = Paging::from_query(None, Some(limit)).unwrap_err();
            assert_eq!(err.field, "limit", "{limit:?}");
        }
        for offset in ["-1", "9223372036854775808", "99999999999999999999", "", "x", "1;DROP TABLE"] {
            let err = Paging::from_query(Some(offset), None).unwrap_err();
            assert_eq!(err.field, "offset", "{offset:?}");
        }
    }

    #[test]
    fn times_are_formatted_in_utc() {
        assert_eq!(format_task_time(0).as_deref(), Some("1970-01-01T00:00:00"));
        assert_eq!(format_task_time(1_693_667_045).as_deref(), Some("2023-09-02T15:04:05"));
        assert_eq!(format_job_time(1_690_364_038).as_deref(), Some("2023-07-26 09:33:58"));
        assert_eq!(format_job_time(253_402_300_799).as_deref(), Some("9999-12-31 23:59:59"));
        assert_eq!(format_job_time(253_402_300_800), None);
        assert_eq!(format_task_time(i64::MAX), None);
        assert_eq!(parse_task_time("2023-09-02T15:04:05"), Some(1_693_667_045));
        for bad in ["2023-9-02T15:04:05", "2023-09-02 15:04:05", "2023-09-02T15:04:05Z", "", "x"] {
            assert_eq!(parse_task_time(bad), None, "{bad:?}");
        }
    }
}
