//! The customer's usage dashboard, `/dashboard`: server-rendered HTML with
//! an inline SVG chart and no third-party request, readable on a phone.
//!
//! Sign-in takes the org's API token once (`POST /dashboard/sign-in`) and
//! keeps it in a cookie that scripts cannot read (`HttpOnly`), that is sent
//! to this site only (`SameSite=Strict`), and that is `Secure` behind TLS
//! (`X-Forwarded-Proto: https`, as Railway's edge sets it); the token never
//! appears in a URL. The page shows the figures of `GET /v1/usage` for the
//! current period: every figure carries the exact string of the API in a
//! `<data value>` element and shows it rounded for reading.

use actix_web::{
    cookie::{Cookie, SameSite},
    get,
    http::header,
    post, web, HttpRequest, HttpResponse,
};
use dynabase_actors::{domain::records::Period, UnixMillis};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;

use super::{api_token, error::ApiError, usage::report_json, HttpState};

const COOKIE: &str = "dynabase_token";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A JSON value as the page shows it: strings as they are, null as a dash.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => escape(s),
        Value::Null => "—".to_owned(),
        other => escape(&other.to_string()),
    }
}

fn page(title: &str, body: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(format!(
            r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
*{{box-sizing:border-box}}
body{{font-family:system-ui,sans-serif;margin:0;padding:1rem;color:#111;background:#fff;max-width:60rem}}
h1{{font-size:1.4rem}} h2{{font-size:1.1rem;margin-top:1.5rem}}
.cards{{display:grid;grid-template-columns:repeat(auto-fit,minmax(11rem,1fr));gap:.75rem}}
.card{{border:1px solid #555;border-radius:.4rem;padding:.6rem}}
.card dt{{font-size:.85rem;color:#333}} .card dd{{margin:0;font-size:1.2rem;font-weight:600;overflow-wrap:anywhere}}
h1,p,td{{overflow-wrap:anywhere}} .scroll{{overflow-x:auto;max-width:100%}} svg{{max-width:100%}}
table{{border-collapse:collapse;width:100%}} th,td{{border-bottom:1px solid #777;padding:.3rem;text-align:left}}
.warn{{background:#fff3cd;border:1px solid #8a6d00;padding:.5rem;border-radius:.4rem}}
a{{color:#0645ad}} button,input{{font-size:1rem;padding:.4rem;max-width:100%}}
</style></head><body>{body}</body></html>"#
        ))
}

fn sign_in_form(error: Option<&str>) -> String {
    let error = error
        .map(|e| {
            format!(
                r#"<p role="alert" id="error" class="warn">{}</p>"#,
                escape(e)
            )
        })
        .unwrap_or_default();
    format!(
        r#"<h1>Dynabase usage</h1>{error}
<form method="post" action="/dashboard/sign-in">
<label for="token">Your organization's API token</label><br>
<input id="token" name="token" type="password" autocomplete="off" required size="40">
<button type="submit" id="sign-in">Sign in</button></form>"#
    )
}

/// A decimal figure: the exact API string in `value`, shown rounded to
/// `places` (banker's rounding, as `rust_decimal` and Python's `decimal` do).
fn figure(v: &Value, places: u32) -> String {
    match v.as_str().map(str::parse::<Decimal>) {
        Some(Ok(exact)) => format!(
            r#"<data value="{}">{}</data>"#,
            escape(&exact.to_string()),
            exact.round_dp(places)
        ),
        _ => text(v),
    }
}

/// Days in the period `YYYY-MM` (31 if it does not parse).
fn days_in(period: &str) -> u32 {
    let mut parts = period.split('-').map(str::parse::<i32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(year)), Some(Ok(month))) => match month {
            4 | 6 | 9 | 11 => 30,
            2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
            2 => 28,
            _ => 31,
        },
        _ => 31,
    }
}

/// Per-day vCPU-hours as SVG bars, one slot per day of the period, with
/// the first and last day and the tallest bar labelled (no script, no
/// external request).
fn chart(period: &str, days: &[Value]) -> String {
    let values: Vec<(String, f64)> = days
        .iter()
        .map(|d| {
            let hours = d["vcpu_hours"]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0);
            (d["day"].as_str().unwrap_or_default().to_owned(), hours)
        })
        .collect();
    let max = values
        .iter()
        .map(|v| v.1)
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let slots = days_in(period);
    let width = 20 * slots;
    let bars: String = values
        .iter()
        .map(|(day, hours)| {
            let slot = day
                .rsplit('-')
                .next()
                .and_then(|d| d.parse::<u32>().ok())
                .unwrap_or(1)
                .clamp(1, slots)
                - 1;
            let h = (hours / max * 100.0).round().max(1.0);
            format!(
                r##"<rect x="{}" y="{}" width="16" height="{h}" fill="#1f5fa8"><title>{} {hours:.3e} vCPU-h</title></rect>"##,
                slot * 20 + 2,
                110.0 - h,
                escape(day)
            )
        })
        .collect();
    let tallest = if max >= 0.001 {
        format!("{max:.3}")
    } else {
        format!("{max:.1e}")
    };
    let label = |x: u32, anchor: &str, t: String| {
        format!(
            r##"<text x="{x}" y="128" font-size="12" text-anchor="{anchor}" fill="#333">{t}</text>"##
        )
    };
    format!(
        r##"<svg id="per-day-chart" role="img" aria-label="vCPU-hours per day; the tallest day used {tallest}" viewBox="0 0 {width} 132" width="100%" height="150"><line x1="0" y1="110" x2="{width}" y2="110" stroke="#555"/><text x="2" y="10" font-size="12" fill="#333">{tallest} vCPU-h</text>{bars}{}{}</svg>"##,
        label(2, "start", format!("{} 1", escape(period))),
        label(width - 2, "end", format!("{slots}"))
    )
}

fn dashboard_body(r: &Value) -> String {
    let b = &r["billing"];
    let card = |id: &str, label: &str, value: String| {
        format!(r#"<div class="card"><dt>{label}</dt><dd id="{id}">{value}</dd></div>"#)
    };
    let cards = [
        card("tier", "Tier", text(&r["tier"])),
        card(
            "vcpu-hours",
            "vCPU-hours used",
            figure(&r["total_vcpu_hours"], 4),
        ),
        card(
            "gb-hours",
            "GB-hours used",
            figure(&r["measured"]["gb_hours"], 4),
        ),
        card(
            "included",
            "vCPU-hours included",
            figure(&r["included_vcpu_hours"], 4),
        ),
        card(
            "percent-used",
            "Share of included used (%)",
            figure(&r["percent_used"], 2),
        ),
        card(
            "projected",
            "Projected vCPU-hours",
            figure(&r["projected_vcpu_hours"], 4),
        ),
        card(
            "projected-cost",
            "Projected overage cost",
            figure(&r["projected_overage_cost"], 2),
        ),
        card(
            "charge",
            "Overage so far",
            figure(&b["charge"]["amount"], 2),
        ),
    ]
    .join("");
    let databases: String = r["by_database"]
        .as_array()
        .map(|dbs| {
            dbs.iter()
                .map(|d| {
                    format!(
                        "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                        text(&d["database"]),
                        text(&d["query_cycles"]),
                        figure(&d["vcpu_hours"], 4)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let days = r["by_day"].as_array().cloned().unwrap_or_default();
    let free = &b["free_overage"]["state"];
    let warning = if free == "soft_period" || free == "forced_upgrade" {
        format!(
            r#"<p class="warn" id="warning">Your organization is past the hours included in FREE ({}). <a href="{}">Upgrade</a></p>"#,
            text(free),
            escape(b["upgrade_url"].as_str().unwrap_or("#"))
        )
    } else {
        String::new()
    };
    let cap = match &b["spend_cap"] {
        Value::Null => r#"<p id="spend-cap">No spend cap.</p>"#.to_owned(),
        c => format!(
            r#"<p id="spend-cap">Spend cap: {} ({}){}</p>"#,
            text(&c["amount"]),
            text(&c["action"]),
            if b["spend_cap_reached"] == true {
                " — reached"
            } else {
                ""
            }
        ),
    };
    format!(
        r#"<h1>Usage of <span id="org">{}</span> — <span id="period">{}</span></h1>{warning}
<dl class="cards">{cards}</dl>
<h2>vCPU-hours per day</h2>{}
<h2>Per database</h2>
<div class="scroll"><table id="per-database"><thead><tr><th scope="col">Database</th><th scope="col">Query cycles</th><th scope="col">vCPU-hours</th></tr></thead><tbody>{databases}</tbody></table></div>
<h2>Spend cap and upgrades</h2>{cap}
<p><a id="upgrade" href="{}">Upgrade your tier</a></p>
<form method="post" action="/dashboard/sign-out"><button type="submit" id="sign-out">Sign out</button></form>"#,
        text(&r["org"]),
        text(&r["period"]),
        chart(r["period"].as_str().unwrap_or_default(), &days),
        escape(b["upgrade_url"].as_str().unwrap_or("#"))
    )
}

#[get("/dashboard")]
pub async fn show(req: HttpRequest, state: web::Data<HttpState>) -> Result<HttpResponse, ApiError> {
    let Some(cookie) = req.cookie(COOKIE) else {
        return Ok(page("Sign in — Dynabase", &sign_in_form(None)));
    };
    let org = match api_token::verify(cookie.value(), state.store.as_ref()).await {
        Ok(org) => org,
        Err(ApiError::Unauthorized) => {
            return Ok(page(
                "Sign in — Dynabase",
                &sign_in_form(Some("Please sign in again.")),
            ))
        }
        Err(e) => return Err(e),
    };
    let report = report_json(&state, &org, Period::containing(UnixMillis::now())).await?;
    Ok(page("Usage — Dynabase", &dashboard_body(&report)))
}

#[derive(Debug, Deserialize)]
pub struct SignIn {
    token: String,
}

#[post("/dashboard/sign-in")]
pub async fn sign_in(
    req: HttpRequest,
    state: web::Data<HttpState>,
    form: web::Form<SignIn>,
) -> Result<HttpResponse, ApiError> {
    let token = form.token.trim();
    match api_token::verify(token, state.store.as_ref()).await {
        Ok(_) => {
            let secure = req
                .headers()
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes() == b"https");
            let cookie = Cookie::build(COOKIE, token.to_owned())
                .path("/")
                .http_only(true)
                .same_site(SameSite::Strict)
                .secure(secure)
                .finish();
            Ok(HttpResponse::SeeOther()
                .cookie(cookie)
                .insert_header((header::LOCATION, "/dashboard"))
                .finish())
        }
        Err(ApiError::Unauthorized) => {
            let mut response = page(
                "Sign in — Dynabase",
                &sign_in_form(Some("That token is not valid.")),
            );
            *response.status_mut() = actix_web::http::StatusCode::UNAUTHORIZED;
            Ok(response)
        }
        Err(e) => Err(e),
    }
}

#[post("/dashboard/sign-out")]
pub async fn sign_out() -> HttpResponse {
    let mut gone = Cookie::build(COOKIE, "").path("/").finish();
    gone.make_removal();
    HttpResponse::SeeOther()
        .cookie(gone)
        .insert_header((header::LOCATION, "/dashboard"))
        .finish()
}
