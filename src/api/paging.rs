//! Twilio-style paging: `PageSize` (default 50, at most 1000), `Page` (from 0) and `PageToken`;
//! answers carry `meta` with absolute first/previous/next page URLs that clients follow as-is.

use serde_json::{json, Value};

use crate::web::params::{encode, Params};
use crate::web::ApiError;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: i64,
    pub size: i64,
    /// Rows skipped before this page.
    pub offset: i64,
}

impl PageRequest {
    pub fn from_params(q: &Params) -> Result<PageRequest, ApiError> {
        let number = |name: &str, default: i64| -> Result<i64, ApiError> {
            match q.get(name) {
                None | Some("") => Ok(default),
                Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    ApiError::bad(format!("{name} must be a non-negative integer, got {v:?}"))
                }),
            }
        };
        let size = number("PageSize", DEFAULT_PAGE_SIZE)?;
        if !(1..=MAX_PAGE_SIZE).contains(&size) {
            return Err(ApiError::bad(format!(
                "PageSize must be between 1 and {MAX_PAGE_SIZE}, got {size}"
            )));
        }
        let page = number("Page", 0)?;
        let offset = match q.get("PageToken").filter(|t| !t.is_empty()) {
            Some(t) => t
                .strip_prefix("PT")
                .and_then(|n| n.parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::bad(format!("invalid PageToken {t:?}")))?,
            None => page
                .checked_mul(size)
                .ok_or_else(|| ApiError::bad("Page is too large"))?,
        };
        Ok(PageRequest { page, size, offset })
    }

    /// How many rows to fetch: one more than a page, to know whether another page follows.
    pub fn fetch_limit(&self) -> i64 {
        self.size + 1
    }
}

/// Build a page answer. `rows` holds up to `fetch_limit()` items; the extra one only says that
/// a next page exists. `base` is the absolute URL of the list without a query; `filters` are
/// the query parameters to keep in every page URL.
pub fn page(
    key: &str,
    mut rows: Vec<Value>,
    req: PageRequest,
    base: &str,
    filters: &[(&str, String)],
) -> Value {
    let more = rows.len() as i64 > req.size;
    rows.truncate(req.size as usize);
    let url = |page: i64, offset: Option<i64>| {
        let mut q = format!("PageSize={}&Page={page}", req.size);
        for (k, v) in filters {
            q.push_str(&format!("&{k}={}", encode(v)));
        }
        if let Some(o) = offset.filter(|o| *o > 0) {
            q.push_str(&format!("&PageToken=PT{o}"));
        }
        format!("{base}?{q}")
    };
    let previous = (req.page > 0).then(|| url(req.page - 1, Some((req.offset - req.size).max(0))));
    let next = more.then(|| url(req.page + 1, Some(req.offset + req.size)));
    json!({
        key: rows,
        "meta": {
            "page": req.page,
            "page_size": req.size,
            "first_page_url": url(0, None),
            "previous_page_url": previous,
            "url": url(req.page, Some(req.offset)),
            "next_page_url": next,
            "key": key,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::params::decode_form;

    fn req(q: &str) -> Result<PageRequest, ApiError> {
        PageRequest::from_params(&Params(decode_form(q.as_bytes())))
    }

    #[test]
    fn page_parameters() {
        assert_eq!(
            req("").unwrap(),
            PageRequest {
                page: 0,
                size: 50,
                offset: 0
            }
        );
        assert_eq!(req("PageSize=2&Page=3").unwrap().offset, 6);
        assert_eq!(req("PageSize=2&Page=1&PageToken=PT7").unwrap().offset, 7);
        assert!(req("PageSize=0").is_err());
        assert!(req("PageSize=1001").is_err());
        assert!(req("Page=-1").is_err());
        assert!(req("PageToken=zz").is_err());
        assert!(req("PageSize=1000&Page=9223372036854775807").is_err());
    }

    #[test]
    fn meta_urls() {
        let r = req("PageSize=2&Page=1").unwrap();
        let v = page(
            "flows",
            vec![json!(1), json!(2), json!(3)],
            r,
            "http://h/v2/Flows",
            &[("DateCreatedFrom", "2026-01-01T00:00:00Z".into())],
        );
        assert_eq!(v["flows"], json!([1, 2]));
        let m = &v["meta"];
        assert_eq!(m["key"], "flows");
        assert_eq!(m["page"], 1);
        assert_eq!(m["page_size"], 2);
        assert_eq!(
            m["first_page_url"],
            "http://h/v2/Flows?PageSize=2&Page=0&DateCreatedFrom=2026-01-01T00%3A00%3A00Z"
        );
        assert_eq!(
            m["next_page_url"],
            "http://h/v2/Flows?PageSize=2&Page=2&DateCreatedFrom=2026-01-01T00%3A00%3A00Z&PageToken=PT4"
        );
        assert!(m["previous_page_url"].as_str().unwrap().contains("Page=0"));
        let last = page(
            "flows",
            vec![json!(1)],
            req("").unwrap(),
            "http://h/v2/Flows",
            &[],
        );
        assert_eq!(last["meta"]["next_page_url"], Value::Null);
        assert_eq!(last["meta"]["previous_page_url"], Value::Null);
    }
}
