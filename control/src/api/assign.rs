//! Pricing plans and assignments of whole GPUs or slices. A GPU's slices are summed in one record
//! (`GpuAlloc`) that every change rewrites conditionally, so two admins can never overfill a GPU.

use super::{check_name, de, finite_nonneg, page_req, ApiError, ApiResult, App, Principal, Request};
use crate::auth::{new_id, now};
use crate::layout;
use crate::model::*;
use crate::store::{Tx, Versioned};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanCreate {
    name: String,
    #[serde(default)]
    currency: Option<String>,
    rates: Vec<Rate>,
    #[serde(default)]
    default_priority: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignCreate {
    tenant_id: String,
    gpu_uuid: String,
    #[serde(default)]
    memory_limit_mib: Option<u64>,
    #[serde(default)]
    compute_share: Option<f64>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    share_cap: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignPatch {
    #[serde(default)]
    gpu_uuid: Option<String>,
    #[serde(default)]
    memory_limit_mib: Option<u64>,
    #[serde(default)]
    compute_share: Option<f64>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    share_cap: Option<bool>,
}

fn check_priority(p: &str) -> Result<String, ApiError> {
    if PRIORITIES.contains(&p) {
        Ok(p.to_string())
    } else {
        Err(ApiError::bad(format!(
            "priority must be one of {}",
            PRIORITIES.join(", ")
        )))
    }
}

/// Resolves defaults and checks a slice of `mem` MiB and `share` fits the GPU beside `alloc` (the other slices).
fn fit(gpu: &Gpu, alloc: &GpuAlloc, mem: Option<u64>, share: Option<f64>) -> Result<(u64, f64), ApiError> {
    let total = gpu.memory_total_mib;
    let (mem, share) = match (mem, share) {
        (None, None) => (total, 1.0),
        (Some(m), None) => (
            m,
            if total > 0 {
                (m as f64 / total as f64).min(1.0)
            } else {
                1.0
            },
        ),
        (None, Some(s)) => ((total as f64 * s).floor() as u64, s),
        (Some(m), Some(s)) => (m, s),
    };
    if !(share.is_finite() && share > 0.0 && share <= 1.0) {
        return Err(ApiError::bad("compute_share must be in (0, 1]"));
    }
    if mem == 0 || mem > total {
        return Err(ApiError::bad(format!(
            "memory_limit_mib must be between 1 and the GPU's {total} MiB"
        )));
    }
    // Checked: sums of slices never wrap around.
    let fits_mem = alloc.memory_mib.checked_add(mem).is_some_and(|m| m <= total);
    if !fits_mem || alloc.share + share > 1.0 + 1e-9 {
        return Err(ApiError::conflict(
            "gpu_capacity",
            format!(
                "GPU {} has {} MiB and {:.2} of its compute left",
                gpu.uuid,
                total.saturating_sub(alloc.memory_mib),
                (1.0 - alloc.share).max(0.0)
            ),
        ));
    }
    Ok((mem, share))
}

fn alloc_of(v: &Option<Versioned<GpuAlloc>>) -> GpuAlloc {
    v.as_ref().map(|a| a.value.clone()).unwrap_or_default()
}

fn alloc_minus(a: &GpuAlloc, mem: u64, share: f64) -> GpuAlloc {
    GpuAlloc {
        memory_mib: a.memory_mib.saturating_sub(mem),
        share: (a.share - share).max(0.0),
        count: a.count.saturating_sub(1),
    }
}

fn alloc_plus(a: &GpuAlloc, mem: u64, share: f64) -> GpuAlloc {
    GpuAlloc {
        memory_mib: a.memory_mib.saturating_add(mem),
        share: a.share + share,
        count: a.count.saturating_add(1),
    }
}

fn put_alloc(tx: &mut Tx, gpu: &str, cur: &Option<Versioned<GpuAlloc>>, new: &GpuAlloc) -> Result<(), ApiError> {
    tx.expect(&layout::gpu_alloc(gpu), cur.as_ref().map(|c| c.raw.as_slice()));
    if new.count == 0 {
        tx.delete(&layout::gpu_alloc(gpu));
    } else {
        tx.put(&layout::gpu_alloc(gpu), new)?;
    }
    Ok(())
}

impl App {
    pub(super) fn list_plans(&self, who: &Principal, q: &HashMap<String, String>) -> ApiResult {
        if matches!(who, Principal::Server { .. }) {
            return Err(ApiError::forbidden());
        }
        let pr = page_req(q)?;
        let page = self.db.page::<Plan>("plan/", pr.cursor.as_deref(), pr.limit)?;
        let list: Vec<Plan> = page.items.into_iter().map(|(_, p)| p).collect();
        Ok((200, json!({ "plans": list, "next_cursor": page.next })))
    }

    pub(super) fn create_plan(&self, who: &Principal, req: &Request) -> ApiResult {
        Self::admin(who)?;
        let r: PlanCreate = de(&req.body)?;
        let name = check_name(&r.name, "name")?;
        let currency = check_name(r.currency.as_deref().unwrap_or("USD"), "currency")?;
        if r.rates.is_empty() || r.rates.len() > 100 {
            return Err(ApiError::bad("a plan needs 1 to 100 rates"));
        }
        let mut rates = Vec::new();
        for rate in r.rates {
            rates.push(Rate {
                gpu_model: check_name(&rate.gpu_model, "gpu_model")?,
                per_gpu_hour: finite_nonneg(rate.per_gpu_hour, "per_gpu_hour")?,
                per_gib_hour: finite_nonneg(rate.per_gib_hour, "per_gib_hour")?,
            });
        }
        let p = Plan {
            id: new_id("p"),
            name,
            currency,
            rates,
            created_at: now(),
            default_priority: r.default_priority.as_deref().map(check_priority).transpose()?,
        };
        let mut tx = Tx::default();
        tx.put(&layout::plan(&p.id), &p)?;
        self.audit(&mut tx, who, req.remote, "plan.create", &p.id, json!({"name": p.name}))?;
        self.db.commit(tx)?;
        Ok((201, super::ser(&p)))
    }

    pub(super) fn delete_plan(&self, who: &Principal, id: &str, req: &Request) -> ApiResult {
        Self::admin(who)?;
        let p = self
            .db
            .get::<Plan>(&layout::plan(id))?
            .ok_or_else(|| ApiError::not_found("plan"))?;
        if !self.db.index_keys(&layout::plan_tenants(id), 1)?.is_empty() {
            return Err(ApiError::conflict("plan_in_use", "tenants are on this plan"));
        }
        let mut tx = Tx::default();
        tx.delete(&layout::plan(id));
        self.audit(&mut tx, who, req.remote, "plan.delete", id, json!({"name": p.name}))?;
        self.db.commit(tx)?;
        Ok((200, super::ser(&p)))
    }

    pub(super) fn list_assignments(&self, who: &Principal, q: &HashMap<String, String>) -> ApiResult {
        let pr = page_req(q)?;
        let tenant = match who {
            Principal::Admin { .. } => q.get("tenant_id").cloned(),
            Principal::Tenant { tenant_id, .. } => {
                if q.get("tenant_id").is_some_and(|t| t != tenant_id) {
                    return Ok((200, json!({"assignments": [], "next_cursor": null})));
                }
                Some(tenant_id.clone())
            }
            Principal::Server { .. } => return Err(ApiError::forbidden()),
        };
        let gpu = q.get("gpu_uuid");
        // The narrowest index that answers the filter.
        let (prefix, by_index) = match (&tenant, gpu) {
            (Some(t), _) => (layout::tenant_assigns(t), true),
            (None, Some(g)) => (layout::gpu_assigns(g), true),
            (None, None) => ("assign/".to_string(), false),
        };
        let page = self.db.page_raw(&prefix, pr.cursor.as_deref(), pr.limit)?;
        let mut list = Vec::new();
        for (k, v) in &page.items {
            let a: Assignment = if by_index {
                match self.db.get::<Assignment>(&layout::assign(k))? {
                    Some(a) => a,
                    None => continue,
                }
            } else {
                serde_json::from_slice(v).map_err(|e| ApiError::internal(e.to_string()))?
            };
            if tenant.as_ref().is_none_or(|t| &a.tenant_id == t) && gpu.is_none_or(|g| &a.gpu_uuid == g) {
                list.push(a);
            }
        }
        Ok((200, json!({ "assignments": list, "next_cursor": page.next })))
    }

    pub(super) fn create_assignment(&self, who: &Principal, req: &Request) -> ApiResult {
        Self::admin(who)?;
        let r: AssignCreate = de(&req.body)?;
        let tenant = self.tenant(&r.tenant_id)?;
        let priority = match &r.priority {
            Some(p) => check_priority(p)?,
            None => match &tenant.plan_id {
                Some(p) => self
                    .db
                    .get::<Plan>(&layout::plan(p))?
                    .and_then(|p| p.default_priority)
                    .unwrap_or_else(default_priority),
                None => default_priority(),
            },
        };
        self.retry(|| {
            let gpu = self.gpu(&r.gpu_uuid)?;
            let alloc = self.db.get_versioned::<GpuAlloc>(&layout::gpu_alloc(&gpu.uuid))?;
            for aid in self.db.index_keys(&layout::gpu_assigns(&gpu.uuid), 10_000)? {
                if let Some(a) = self.db.get::<Assignment>(&layout::assign(&aid))? {
                    if a.tenant_id == r.tenant_id {
                        return Err(ApiError::conflict(
                            "already_assigned",
                            "the tenant already has this GPU; change that assignment",
                        ));
                    }
                }
            }
            let (mem, share) = fit(&gpu, &alloc_of(&alloc), r.memory_limit_mib, r.compute_share)?;
            let n = now();
            let a = Assignment {
                id: new_id("a"),
                tenant_id: r.tenant_id.clone(),
                gpu_uuid: gpu.uuid.clone(),
                memory_limit_mib: mem,
                compute_share: share,
                priority: priority.clone(),
                share_cap: r.share_cap.unwrap_or(false),
                created_at: n,
                updated_at: n,
            };
            let mut tx = Tx::default();
            put_alloc(&mut tx, &gpu.uuid, &alloc, &alloc_plus(&alloc_of(&alloc), mem, share))?;
            layout::put_assignment(&mut tx, &a)?;
            self.audit(&mut tx, who, req.remote, "assignment.create", &a.id, super::ser(&a))?;
            self.db.commit(tx)?;
            Ok((201, super::ser(&a)))
        })
    }

    pub(super) fn patch_assignment(&self, who: &Principal, id: &str, req: &Request) -> ApiResult {
        Self::admin(who)?;
        let r: AssignPatch = de(&req.body)?;
        let priority = r.priority.as_deref().map(check_priority).transpose()?;
        let (a, end_old) = self.retry(|| {
            let cur = self
                .db
                .get_versioned::<Assignment>(&layout::assign(id))?
                .ok_or_else(|| ApiError::not_found("assignment"))?;
            let mut a = cur.value.clone();
            let old_gpu = a.gpu_uuid.clone();
            let gpu = self.gpu(r.gpu_uuid.as_deref().unwrap_or(&a.gpu_uuid))?;
            let moved = gpu.uuid != old_gpu;
            let old_alloc = self.db.get_versioned::<GpuAlloc>(&layout::gpu_alloc(&old_gpu))?;
            let mut tx = Tx::default();
            tx.expect(&layout::assign(id), Some(&cur.raw));
            let (mem, share) = if moved {
                for aid in self.db.index_keys(&layout::gpu_assigns(&gpu.uuid), 10_000)? {
                    if self
                        .db
                        .get::<Assignment>(&layout::assign(&aid))?
                        .is_some_and(|x| x.tenant_id == a.tenant_id)
                    {
                        return Err(ApiError::conflict(
                            "already_assigned",
                            "the tenant already has that GPU",
                        ));
                    }
                }
                let new_alloc = self.db.get_versioned::<GpuAlloc>(&layout::gpu_alloc(&gpu.uuid))?;
                // A move with no new sizes keeps the share and as much memory as before, capped by the new GPU.
                let mem = r
                    .memory_limit_mib
                    .unwrap_or(a.memory_limit_mib.min(gpu.memory_total_mib));
                let share = r.compute_share.unwrap_or(a.compute_share);
                let (mem, share) = fit(&gpu, &alloc_of(&new_alloc), Some(mem), Some(share))?;
                let freed = alloc_minus(&alloc_of(&old_alloc), a.memory_limit_mib, a.compute_share);
                put_alloc(&mut tx, &old_gpu, &old_alloc, &freed)?;
                put_alloc(
                    &mut tx,
                    &gpu.uuid,
                    &new_alloc,
                    &alloc_plus(&alloc_of(&new_alloc), mem, share),
                )?;
                (mem, share)
            } else {
                let others = alloc_minus(&alloc_of(&old_alloc), a.memory_limit_mib, a.compute_share);
                let mem = r.memory_limit_mib.unwrap_or(a.memory_limit_mib);
                let share = r.compute_share.unwrap_or(a.compute_share);
                let (mem, share) = fit(&gpu, &others, Some(mem), Some(share))?;
                put_alloc(&mut tx, &old_gpu, &old_alloc, &alloc_plus(&others, mem, share))?;
                (mem, share)
            };
            let shrunk = moved
                || mem < a.memory_limit_mib
                || share < a.compute_share
                || priority.as_ref().is_some_and(|p| *p != a.priority)
                || r.share_cap.is_some_and(|c| c && !a.share_cap);
            layout::delete_assignment(&mut tx, &a);
            a.gpu_uuid = gpu.uuid.clone();
            a.memory_limit_mib = mem;
            a.compute_share = share;
            if let Some(p) = &priority {
                a.priority = p.clone();
            }
            if let Some(c) = r.share_cap {
                a.share_cap = c;
            }
            a.updated_at = now();
            layout::put_assignment(&mut tx, &a)?;
            self.audit(&mut tx, who, req.remote, "assignment.update", id, super::ser(&a))?;
            self.db.commit(tx)?;
            Ok((a, shrunk.then_some(old_gpu)))
        })?;
        // Live sessions hold tickets for the old GPU or the old terms: end them so the tenant gets a fresh ticket.
        if let Some(g) = end_old {
            self.end_sessions_on(&a.tenant_id, Some(&g), "assignment changed")?;
        }
        Ok((200, super::ser(&a)))
    }

    pub(super) fn revoke_assignment(&self, who: &Principal, id: &str, req: &Request) -> ApiResult {
        Self::admin(who)?;
        let a = self.remove_assignment(id, "assignment revoked")?;
        let mut tx = Tx::default();
        self.audit(&mut tx, who, req.remote, "assignment.delete", id, super::ser(&a))?;
        self.db.commit(tx)?;
        Ok((200, super::ser(&a)))
    }

    /// Deletes an assignment, frees its slice and ends the tenant's live sessions on that GPU.
    pub(super) fn remove_assignment(&self, id: &str, reason: &str) -> Result<Assignment, ApiError> {
        let a = self.retry(|| {
            let cur = self
                .db
                .get_versioned::<Assignment>(&layout::assign(id))?
                .ok_or_else(|| ApiError::not_found("assignment"))?;
            let a = cur.value;
            let alloc = self.db.get_versioned::<GpuAlloc>(&layout::gpu_alloc(&a.gpu_uuid))?;
            let mut tx = Tx::default();
            tx.expect(&layout::assign(id), Some(&cur.raw));
            put_alloc(
                &mut tx,
                &a.gpu_uuid,
                &alloc,
                &alloc_minus(&alloc_of(&alloc), a.memory_limit_mib, a.compute_share),
            )?;
            layout::delete_assignment(&mut tx, &a);
            self.db.commit(tx)?;
            Ok(a)
        })?;
        self.end_sessions_on(&a.tenant_id, Some(&a.gpu_uuid), reason)?;
        Ok(a)
    }
}
