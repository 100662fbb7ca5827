//! Session affinity end to end (`spec.analysis.sessionAffinity`, docs/flagger-contract.md §4.3):
//! during a run the VirtualService pins cookie holders to the canary (and, with
//! `primaryCookieName`, to the primary) with the cookies kept in the Canary's status; after the run
//! it expires the cookie, which the status keeps as `previousSessionAffinityCookie`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests stop at a failed step, naming it

mod support;

use serde_json::{Value, json};
use serin::api::Canary;
use serin::rollout::Routes;
use serin_sandbox::testenv::eventually;
use support::*;

const COOKIE: &str = "flagger-cookie";
const PRIMARY_COOKIE: &str = "primary-cookie";

/// A progressive canary with session affinity. The mesh simulator sends no request to the cookie
/// rules (`simulate-match-share: 0`), so all traffic goes through the weighted route.
fn sticky_canary(primary_cookie: bool) -> Value {
    let mut sa = json!({"cookieName": COOKIE, "maxAge": 300, "path": "/", "httpOnly": true});
    if primary_cookie {
        sa["primaryCookieName"] = json!(PRIMARY_COOKIE);
    }
    let mut c = canary(
        "podinfo",
        json!({"interval": "10s", "threshold": 2, "maxWeight": 50, "stepWeight": 25,
               "metrics": builtin_metrics(), "sessionAffinity": sa}),
    );
    c["spec"]["service"]["apex"] = json!({"annotations": {"serin.dev/simulate-match-share": "0"}});
    c
}

async fn initialized(prefix: &str, primary_cookie: bool) -> World {
    let w = World::new(prefix).await;
    w.apply(deployment("podinfo", "podinfo:6.0.0", json!({})))
        .await;
    w.apply(sticky_canary(primary_cookie)).await;
    w.wait_phase("podinfo", "Initialized", LIMIT).await;
    w
}

fn cookies_of(c: &Canary) -> (Option<String>, Option<String>, Option<String>) {
    let s = c.status.clone().unwrap_or_default();
    (
        s.session_affinity_cookie,
        s.primary_session_affinity_cookie,
        s.previous_session_affinity_cookie,
    )
}

/// `name=<10 letters>`, as Flagger draws them.
fn assert_cookie_shape(cookie: &str, name: &str) {
    let value = cookie
        .strip_prefix(&format!("{name}="))
        .unwrap_or_else(|| panic!("{cookie:?} is not a {name} cookie"));
    assert_eq!(value.len(), 10, "{cookie:?}");
    assert!(value.chars().all(|c| c.is_ascii_alphabetic()), "{cookie:?}");
}

fn regex_for(cookie: &str) -> String {
    let (name, value) = cookie.split_once('=').expect("name=value");
    format!(".*{name}.*{value}.*")
}

/// Waits until the canary gets traffic and the VirtualService carries the status's cookie; both
/// are read in one go so that what is asserted is one consistent picture.
async fn mid_run(w: &World) -> (Canary, Value) {
    eventually("a run with sticky rules", LIMIT, || async {
        let c = w.canary("podinfo").await;
        let weight = c.status.as_ref().and_then(|s| s.canary_weight).unwrap_or(0);
        let cookie = cookies_of(&c)
            .0
            .ok_or("no sessionAffinityCookie in status")?;
        if weight == 0 {
            return Err(format!("canary weight 0 (cookie {cookie})"));
        }
        let vs = w
            .virtual_service("podinfo")
            .await
            .ok_or("no VirtualService")?;
        let regex = vs["spec"]["http"][0]["match"][0]["headers"]["Cookie"]["regex"].clone();
        let routes = routes_of(&vs, "podinfo");
        if regex != json!(regex_for(&cookie)) || routes.map(|r| r.canary) != Some(weight as u32) {
            return Err(format!(
                "VirtualService not yet at {cookie} / {weight}: {vs}"
            ));
        }
        Ok((c, vs))
    })
    .await
}

#[tokio::test]
async fn a_promoted_run_pins_users_then_expires_the_cookie() {
    let w = initialized("affinity", true).await;

    // Before any run: no cookie anywhere.
    let c = w.canary("podinfo").await;
    assert_eq!(cookies_of(&c), (None, None, None));
    let vs = w.virtual_service("podinfo").await.expect("virtual service");
    assert_eq!(vs["spec"]["http"].as_array().map(Vec::len), Some(1), "{vs}");

    let weights = w.watch_weights("podinfo");
    w.apply(deployment("podinfo", "podinfo:6.0.1", json!({})))
        .await;

    let (c, vs) = mid_run(&w).await;
    let (cookie, primary_cookie, previous) = cookies_of(&c);
    let cookie = cookie.expect("canary cookie");
    let primary_cookie = primary_cookie.expect("primary cookie in status during the run");
    assert_cookie_shape(&cookie, COOKIE);
    assert_cookie_shape(&primary_cookie, PRIMARY_COOKIE);
    assert_eq!(previous, None);
    let weight = c.status.as_ref().and_then(|s| s.canary_weight).unwrap() as u32;

    let http = vs["spec"]["http"].as_array().expect("http routes");
    assert_eq!(http.len(), 3, "{vs}");
    assert_eq!(
        http[0],
        json!({
            "name": "sticky-route",
            "match": [{"headers": {"Cookie": {"regex": regex_for(&cookie)}}}],
            "route": [
                {"destination": {"host": "podinfo-primary"}, "weight": 0},
                {"destination": {"host": "podinfo-canary"}, "weight": 100}
            ]
        })
    );
    assert_eq!(
        http[1],
        json!({
            "name": "sticky-route-primary",
            "match": [{"headers": {"Cookie": {"regex": regex_for(&primary_cookie)}}}],
            "route": [
                {"destination": {"host": "podinfo-primary"}, "weight": 100},
                {"destination": {"host": "podinfo-canary"}, "weight": 0}
            ]
        })
    );
    assert_eq!(
        http[2],
        json!({"route": [
            {
                "destination": {"host": "podinfo-primary"}, "weight": 100 - weight,
                // The primary cookie lives one analysis interval.
                "headers": {"response": {"add": {"Set-Cookie": format!("{primary_cookie}; Max-Age=10; HttpOnly; Path=/")}}}
            },
            {
                "destination": {"host": "podinfo-canary"}, "weight": weight,
                "headers": {"response": {"add": {"Set-Cookie": format!("{cookie}; Max-Age=300; HttpOnly; Path=/")}}}
            }
        ]})
    );

    let c = w.wait_phase("podinfo", "Succeeded", LIMIT).await;
    // The weighted route stepped exactly as without session affinity.
    weights.caught_up().await;
    assert_eq!(
        weights.canary_weights(),
        vec![0, 25, 50, 0],
        "weights over time: {:?}",
        weights.all()
    );
    let target = w.deployment("podinfo-primary").await.unwrap();
    assert_eq!(image_of(&target), "podinfo:6.0.1");

    // After the run: the status keeps the run's cookie as the previous one, and the
    // VirtualService expires it for whoever still sends it.
    assert_eq!(cookies_of(&c), (None, None, Some(cookie.clone())));
    let vs = eventually("the expiry rule", LIMIT, || async {
        let vs = w
            .virtual_service("podinfo")
            .await
            .ok_or("no VirtualService")?;
        if vs["spec"]["http"].as_array().map(Vec::len) == Some(2) {
            Ok(vs)
        } else {
            Err(format!("{vs}"))
        }
    })
    .await;
    let plain = json!([
        {"destination": {"host": "podinfo-primary"}, "weight": 100},
        {"destination": {"host": "podinfo-canary"}, "weight": 0}
    ]);
    assert_eq!(
        vs["spec"]["http"],
        json!([
            {
                "name": "sticky-route",
                "match": [{"headers": {"Cookie": {"regex": regex_for(&cookie)}}}],
                "headers": {"response": {"add": {"Set-Cookie": format!("{cookie}; Max-Age=-1; HttpOnly; Path=/")}}},
                "route": plain
            },
            {"route": plain}
        ])
    );
    assert_eq!(
        routes_of(&vs, "podinfo"),
        Some(Routes {
            primary: 100,
            canary: 0,
            mirror: false
        })
    );

    // The next run draws a new cookie; the last one stays the previous one until it ends.
    w.apply(deployment("podinfo", "podinfo:6.0.2", json!({})))
        .await;
    let (c, _) = mid_run(&w).await;
    let (next, _, previous) = cookies_of(&c);
    let next = next.expect("a cookie for the second run");
    assert_cookie_shape(&next, COOKIE);
    assert_ne!(next, cookie, "a new run gets a new cookie");
    assert_eq!(previous, Some(cookie));
}

#[tokio::test]
async fn a_rolled_back_run_expires_its_cookie_too() {
    let w = initialized("affinity-rollback", false).await;
    w.apply(deployment(
        "podinfo",
        "podinfo:6.0.1",
        json!({"serin.dev/simulate": "errors=50%"}),
    ))
    .await;
    let (c, vs) = mid_run(&w).await;
    let cookie = cookies_of(&c).0.expect("canary cookie");
    assert_eq!(
        cookies_of(&c).1,
        None,
        "no primaryCookieName, no primary cookie"
    );
    assert_eq!(
        vs["spec"]["http"].as_array().map(Vec::len),
        Some(2),
        "sticky rule and weighted route: {vs}"
    );

    let c = w.wait_phase("podinfo", "Failed", LIMIT).await;
    assert_eq!(cookies_of(&c), (None, None, Some(cookie.clone())));
    let vs = eventually("the expiry rule", LIMIT, || async {
        let vs = w
            .virtual_service("podinfo")
            .await
            .ok_or("no VirtualService")?;
        let set = vs["spec"]["http"][0]["headers"]["response"]["add"]["Set-Cookie"].clone();
        if set == json!(format!("{cookie}; Max-Age=-1; HttpOnly; Path=/")) {
            Ok(vs)
        } else {
            Err(format!("{vs}"))
        }
    })
    .await;
    assert_eq!(routes_of(&vs, "podinfo").map(|r| r.canary), Some(0));
}
