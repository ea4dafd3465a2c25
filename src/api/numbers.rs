//! Twilio's IncomingPhoneNumbers resource (`/2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers`,
//! with or without `.json`): create, list, fetch, update and delete the numbers that answer
//! calls and messages. A number whose `VoiceUrl` or `SmsUrl` is a Studio flow webhook URL
//! (`…/Flows/FW…`, Twilio's or this gateway's) routes calls or messages to that flow. Numbers
//! live in the store (every node sees them within a few seconds); `[[routes]]` from the
//! configuration are listed too, read-only.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{Api, ApiError};
use crate::store::{new_sid, now_rfc3339, NumberRecord};
use crate::web::params::Params;

/// Longest URL or name kept.
const MAX_FIELD: usize = 2048;

fn base(account: &str) -> String {
    format!("/2010-04-01/Accounts/{account}/IncomingPhoneNumbers")
}

/// The account in the path must be ours; anything else is not found (as Twilio answers).
fn check_account(api: &Api, account: &str) -> Result<(), ApiError> {
    if account == api.credentials.account_sid {
        Ok(())
    } else {
        Err(ApiError::NotFound(base(account)))
    }
}

/// `PN…` with or without `.json`.
fn sid_of(file: &str) -> &str {
    file.strip_suffix(".json").unwrap_or(file)
}

/// A `[[routes]]` entry's stable SID (from its number), so it can be fetched like the others.
fn configured_sid(number: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "PN{}",
        &hex::encode(Sha256::digest(number.as_bytes()))[..32]
    )
}

fn method(p: &Params, name: &str, current: Option<&str>) -> Result<String, ApiError> {
    match p.get(name) {
        None => Ok(current.unwrap_or("POST").to_string()),
        Some(m) if m.eq_ignore_ascii_case("GET") || m.eq_ignore_ascii_case("POST") => {
            Ok(m.to_ascii_uppercase())
        }
        Some(m) => Err(ApiError::bad(format!(
            "{name} must be GET or POST, not {m:?}"
        ))),
    }
}

fn text(p: &Params, name: &str, current: &str) -> Result<String, ApiError> {
    let v = p.get(name).unwrap_or(current);
    if v.len() > MAX_FIELD {
        return Err(ApiError::bad(format!(
            "{name} is longer than {MAX_FIELD} characters"
        )));
    }
    Ok(v.to_string())
}

/// A URL parameter: empty, or http(s).
fn url(p: &Params, name: &str, current: &str) -> Result<String, ApiError> {
    let v = text(p, name, current)?;
    let ok = v.is_empty() || v.starts_with("http://") || v.starts_with("https://");
    if !ok {
        return Err(ApiError::bad(format!("{name} must be an http(s) URL")));
    }
    Ok(v)
}

/// E.164: `+` and 1 to 15 digits (spaces, dashes, dots and brackets dropped).
fn e164(raw: &str) -> Result<String, ApiError> {
    // The dialler's normaliser (separators dropped, digits only), with E.164's `+` and length.
    crate::call::outbound::normalise(raw)
        .filter(|n| n.starts_with('+') && n.len() <= 16)
        .ok_or_else(|| {
            ApiError::bad(format!(
                "PhoneNumber {raw:?} is not an E.164 number (+ and up to 15 digits)"
            ))
        })
}

fn to_json(api: &Api, account: &str, n: &NumberRecord, origin: &str) -> Value {
    let uri = format!("{}/{}.json", base(account), n.sid);
    json!({
        "sid": n.sid,
        "account_sid": account,
        "phone_number": n.phone_number,
        "friendly_name": n.friendly_name,
        "voice_url": n.voice_url,
        "voice_method": n.voice_method,
        "sms_url": n.sms_url,
        "sms_method": n.sms_method,
        "voice_flow_sid": crate::routing::flow_sid_in_url(&n.voice_url),
        "sms_flow_sid": crate::routing::flow_sid_in_url(&n.sms_url),
        "capabilities": {"voice": true, "sms": true, "mms": false, "fax": false},
        "status": "in-use",
        "origin": origin,
        "api_version": "2010-04-01",
        "date_created": rfc2822(&n.date_created),
        "date_updated": rfc2822(&n.date_updated),
        "uri": uri,
        "url": api.url(&uri),
    })
}

/// The 2010 API's date form: `Tue, 01 Dec 2026 17:30:05 +0000` (null when unknown).
fn rfc2822(stored: &str) -> Value {
    chrono::DateTime::parse_from_rfc3339(stored)
        .map(|d| {
            json!(d
                .with_timezone(&chrono::Utc)
                .format("%a, %d %b %Y %H:%M:%S +0000")
                .to_string())
        })
        .unwrap_or(Value::Null)
}

/// The `[[routes]]` entries as read-only numbers, their flow's webhook URL as both URLs.
fn configured(api: &Api) -> Vec<NumberRecord> {
    api.router
        .configured_numbers()
        .into_iter()
        .map(|(number, flow)| {
            let url = api.url(&format!(
                "/v1/Accounts/{}/Flows/{flow}",
                api.credentials.account_sid
            ));
            NumberRecord {
                sid: configured_sid(&number),
                phone_number: number.clone(),
                friendly_name: format!("{number} ([[routes]] in the configuration)"),
                voice_url: url.clone(),
                voice_method: "POST".into(),
                sms_url: url,
                sms_method: "POST".into(),
                date_created: String::new(),
                date_updated: String::new(),
            }
        })
        .collect()
}

fn read_only(sid: &str) -> ApiError {
    ApiError::bad(format!(
        "{sid} is a [[routes]] entry of the configuration: change it there, not through the API"
    ))
}

/// Tell this node's router at once (other nodes reread the store every few seconds).
async fn refresh(api: &Api) -> Result<(), ApiError> {
    api.router.refresh_numbers(&api.store).await?;
    Ok(())
}

pub async fn create(
    State(api): State<Arc<Api>>,
    Path(account): Path<String>,
    p: Params,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_account(&api, &account)?;
    let number = e164(p.required("PhoneNumber")?)?;
    if api
        .router
        .configured_numbers()
        .iter()
        .any(|(n, _)| *n == crate::routing::normalize(&number))
    {
        return Err(ApiError::bad(format!(
            "{number} is routed by [[routes]] in the configuration"
        )));
    }
    let now = now_rfc3339();
    let rec = NumberRecord {
        sid: new_sid("PN"),
        friendly_name: text(&p, "FriendlyName", &number)?,
        phone_number: number,
        voice_url: url(&p, "VoiceUrl", "")?,
        voice_method: method(&p, "VoiceMethod", None)?,
        sms_url: url(&p, "SmsUrl", "")?,
        sms_method: method(&p, "SmsMethod", None)?,
        date_created: now.clone(),
        date_updated: now,
    };
    if !api.store.create_number(&rec).await? {
        return Err(ApiError::bad(format!(
            "{} is already one of this account's numbers",
            rec.phone_number
        )));
    }
    refresh(&api).await?;
    tracing::info!(number = %rec.phone_number, sid = %rec.sid, voice_url = %crate::redact::url(&rec.voice_url), "phone number added");
    Ok((
        StatusCode::CREATED,
        Json(to_json(&api, &account, &rec, "api")),
    ))
}

pub async fn list(
    State(api): State<Arc<Api>>,
    Path(account): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    check_account(&api, &account)?;
    let q = Params::from_query(query.as_deref());
    let want_number = q.get("PhoneNumber").map(crate::routing::normalize);
    let want_name = q.get("FriendlyName");
    let mut all: Vec<Value> = Vec::new();
    let stored = api.store.numbers().await?;
    let lists = [(configured(&api), "config"), (stored, "api")];
    for (records, origin) in &lists {
        for n in records {
            if want_number
                .as_deref()
                .is_some_and(|w| crate::routing::normalize(&n.phone_number) != w)
            {
                continue;
            }
            if want_name.is_some_and(|w| n.friendly_name != w) {
                continue;
            }
            all.push(to_json(&api, &account, n, origin));
        }
    }
    let size: usize = q
        .get("PageSize")
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
        .clamp(1, 1000);
    let page: usize = q.get("Page").and_then(|s| s.parse().ok()).unwrap_or(0);
    let start = page.saturating_mul(size).min(all.len());
    let end = (start + size).min(all.len());
    let uri = |page: usize| format!("{}.json?PageSize={size}&Page={page}", base(&account));
    Ok(Json(json!({
        "incoming_phone_numbers": all[start..end],
        "page": page,
        "page_size": size,
        "start": start,
        "end": end.saturating_sub(1),
        "uri": uri(page),
        "first_page_uri": uri(0),
        "next_page_uri": (end < all.len()).then(|| uri(page + 1)),
        "previous_page_uri": (page > 0).then(|| uri(page - 1)),
    })))
}

/// The stored number, or the configured one, by SID.
async fn find(api: &Api, sid: &str) -> Result<Option<(NumberRecord, &'static str)>, ApiError> {
    if let Some(n) = api.store.number(sid).await? {
        return Ok(Some((n, "api")));
    }
    Ok(configured(api)
        .into_iter()
        .find(|n| n.sid == sid)
        .map(|n| (n, "config")))
}

pub async fn fetch(
    State(api): State<Arc<Api>>,
    Path((account, file)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_account(&api, &account)?;
    let sid = sid_of(&file);
    match find(&api, sid).await? {
        Some((n, origin)) => Ok(Json(to_json(&api, &account, &n, origin))),
        None => Err(ApiError::NotFound(format!("{}/{sid}", base(&account)))),
    }
}

pub async fn update(
    State(api): State<Arc<Api>>,
    Path((account, file)): Path<(String, String)>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    check_account(&api, &account)?;
    let sid = sid_of(&file);
    let Some((mut n, origin)) = find(&api, sid).await? else {
        return Err(ApiError::NotFound(format!("{}/{sid}", base(&account))));
    };
    if origin == "config" {
        return Err(read_only(sid));
    }
    n.friendly_name = text(&p, "FriendlyName", &n.friendly_name)?;
    n.voice_url = url(&p, "VoiceUrl", &n.voice_url)?;
    n.voice_method = method(&p, "VoiceMethod", Some(&n.voice_method))?;
    n.sms_url = url(&p, "SmsUrl", &n.sms_url)?;
    n.sms_method = method(&p, "SmsMethod", Some(&n.sms_method))?;
    n.date_updated = now_rfc3339();
    if !api.store.update_number(&n).await? {
        return Err(ApiError::NotFound(format!("{}/{sid}", base(&account))));
    }
    refresh(&api).await?;
    tracing::info!(number = %n.phone_number, sid = %n.sid, voice_url = %crate::redact::url(&n.voice_url), "phone number updated");
    Ok(Json(to_json(&api, &account, &n, origin)))
}

pub async fn delete(
    State(api): State<Arc<Api>>,
    Path((account, file)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_account(&api, &account)?;
    let sid = sid_of(&file);
    if configured(&api).iter().any(|n| n.sid == sid) {
        return Err(read_only(sid));
    }
    if !api.store.delete_number(sid).await? {
        return Err(ApiError::NotFound(format!("{}/{sid}", base(&account))));
    }
    refresh(&api).await?;
    tracing::info!(%sid, "phone number removed");
    Ok(StatusCode::NO_CONTENT)
}
