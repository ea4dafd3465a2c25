//! Recordings in the shape of Twilio's Recordings resource:
//! `GET /2010-04-01/Accounts/{AccountSid}/Recordings/{Sid}` returns the WAV (as do `.wav`),
//! `.json` returns the metadata. `RecordingUrl` published by record-voicemail points here.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{Api, ApiError};

pub async fn fetch(
    State(api): State<Arc<Api>>,
    Path((account, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let not_found =
        || ApiError::NotFound(format!("/2010-04-01/Accounts/{account}/Recordings/{file}"));
    let Some(recordings) = api.recordings.as_ref() else {
        return Err(not_found());
    };
    if account != api.credentials.account_sid {
        return Err(not_found());
    }
    let (sid, ext) = match file.rsplit_once('.') {
        Some((sid, ext)) => (sid, ext.to_ascii_lowercase()),
        None => (file.as_str(), "wav".to_string()),
    };
    let (kind, content_type) = match ext.as_str() {
        "wav" => ("wav", "audio/x-wav"),
        "json" => ("json", "application/json"),
        _ => return Err(not_found()),
    };
    let path = recordings.path_for(sid, kind).ok_or_else(not_found)?;
    let bytes = tokio::fs::read(&path).await.map_err(|_| not_found())?;
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}
