#!/usr/bin/env python3
"""End-to-end scenario against ferry's SFS Turbo-compatible API, driven only by
the official Huawei Cloud Python SDK (huaweicloudsdksfsturbo, pinned in
requirements.txt next to this file).

Environment:
  FERRY_ENDPOINT      http://127.0.0.1:PORT (required)
  FERRY_AK, FERRY_SK  access key / secret key of an SDK credential (required)
  FERRY_PROJECT       project id the credential belongs to (required)
  FERRY_BUCKET        bucket the backend target links to (required); the harness
                      puts a few objects under FERRY_PREFIX in it beforehand
  FERRY_OBS_ENDPOINT  object store endpoint the target links to (required)
  FERRY_PREFIX        task prefix, default "ds/"
  FERRY_TARGET_DIR    file_system_path of the target, default "data"
  FERRY_POLL_TIMEOUT  seconds to wait for any one asynchronous state, default 120
  FERRY_POLL_INTERVAL seconds between polls, default 0.2
  FERRY_SHARE_SIZE    GiB of the share, default 1228
  FERRY_REQUIRE_JOB_IDS  "1" (default): asynchronous operations must return a
                      `job_id` (ferry extension; no SDK response model has one,
                      the script reads it from the raw body); "0": skip job checks
                      where it is missing
  FERRY_SHARE_ACTIONS "1" (default): also rename, expand and configure gc time

Each step prints one line. Any mismatch raises ScenarioError; the exit code is 0
only when every step passed (1 on a mismatch, 2 on bad configuration).
"""

import datetime
import json
import os
import sys
import time
import traceback
import uuid

# The SDK talks to loopback; never route it through a proxy from the environment.
for _var in ("NO_PROXY", "no_proxy"):
    _cur = os.environ.get(_var, "")
    os.environ[_var] = ",".join(x for x in (_cur, "127.0.0.1", "localhost", "::1") if x)

from huaweicloudsdkcore.auth.credentials import BasicCredentials  # noqa: E402
from huaweicloudsdkcore.exceptions import exceptions as sdk_exc  # noqa: E402
from huaweicloudsdkcore.http.http_config import HttpConfig  # noqa: E402
from huaweicloudsdksfsturbo.v1 import (  # noqa: E402
    AutoExportPolicy,
    ChangeShareNameReq,
    ChangeShareNameRequest,
    CreateBackendTargetRequest,
    CreateBackendTargetRequestBody,
    CreateHpcCacheTaskReq,
    CreateHpcCacheTaskRequest,
    CreateShareRequest,
    CreateShareRequestBody,
    DeleteBackendTargetRequest,
    DeleteHpcCacheTaskRequest,
    DeleteShareRequest,
    ExpandShareRequest,
    ExpandShareRequestBody,
    Extend,
    ListBackendTargetsRequest,
    ListHpcCacheTasksRequest,
    ListSharesRequest,
    Metadata,
    ObsDataRepository,
    ObsDataRepositoryPolicy,
    ObsTargetAttributes,
    SFSTurboClient,
    Share,
    ShareName,
    ShowBackendTargetInfoRequest,
    ShowHpcCacheTaskRequest,
    ShowJobDetailRequest,
    ShowShareRequest,
    UpdateHpcShareRequest,
    UpdateHpcShareRequestBody,
    UpdateObsTargetAttributesRequest,
    UpdateObsTargetAttributesRequestBody,
    UpdateObsTargetPolicyRequest,
    UpdateObsTargetPolicyRequestBody,
)

TASK_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
JOB_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TASK_TYPES = ("import_metadata", "import", "preload", "export")


class ScenarioError(Exception):
    pass


class ConfigError(Exception):
    pass


def env(name, default=None):
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise ConfigError("environment variable %s is required" % name)
    return value


def env_flag(name, default):
    return os.environ.get(name, default).strip().lower() not in ("0", "false", "no", "")


STEP = [0]


def step(name, detail=""):
    STEP[0] += 1
    print("ok %2d %s%s" % (STEP[0], name, (": " + detail) if detail else ""), flush=True)


def check(cond, what, *details):
    if not cond:
        raise ScenarioError(what + ("" if not details else " (" + "; ".join(str(d) for d in details) + ")"))


def check_eq(actual, expected, what):
    if actual != expected:
        raise ScenarioError("%s: expected %r, got %r" % (what, expected, actual))


def check_task_time(value, what, allow_empty=False):
    if allow_empty and not value:
        return None
    try:
        return datetime.datetime.strptime(value, TASK_TIME_FORMAT)
    except (TypeError, ValueError):
        raise ScenarioError("%s: %r is not YYYY-MM-DDTHH:MM:SS" % (what, value))


def check_job_time(value, what, allow_empty=False):
    if allow_empty and not value:
        return None
    try:
        return datetime.datetime.strptime(value, JOB_TIME_FORMAT)
    except (TypeError, ValueError):
        raise ScenarioError("%s: %r is not YYYY-MM-DD HH:MM:SS" % (what, value))


def expect_sdk_error(call, status, error_code, what):
    """Run call(); it must raise the SDK's ClientRequestException with the given
    HTTP status (an int, a tuple of ints, or None for any) and error code."""
    try:
        resp = call()
    except sdk_exc.ClientRequestException as e:
        statuses = status if isinstance(status, tuple) else (status,)
        if status is not None and e.status_code not in statuses:
            raise ScenarioError("%s: expected HTTP %s, got %s (%s)" % (what, status, e.status_code, e))
        if error_code is not None and e.error_code != error_code:
            raise ScenarioError("%s: expected error_code %s, got %r (error_msg %r)"
                                % (what, error_code, e.error_code, e.error_msg))
        check(e.error_msg, "%s: error_msg is empty" % what)
        return e
    raise ScenarioError("%s: expected an error %s, got success: %s" % (what, error_code, resp))


class Poller:
    def __init__(self, timeout, interval):
        self.timeout = timeout
        self.interval = interval

    def until(self, fetch, done, what, failed=None):
        """Call fetch() until done(value) is true; failed(value) returning a
        string aborts with that message. Returns the last value."""
        deadline = time.monotonic() + self.timeout
        last = None
        while True:
            last = fetch()
            if failed is not None:
                why = failed(last)
                if why:
                    raise ScenarioError("%s: %s" % (what, why))
            if done(last):
                return last
            if time.monotonic() > deadline:
                raise ScenarioError("%s: not reached within %ss; last: %s" % (what, self.timeout, last))
            time.sleep(self.interval)


def raw_json(resp):
    try:
        return resp.to_json_object() or {}
    except ValueError:
        return {}


class Scenario:
    def __init__(self):
        self.endpoint = env("FERRY_ENDPOINT").rstrip("/")
        self.ak = env("FERRY_AK")
        self.sk = env("FERRY_SK")
        self.project = env("FERRY_PROJECT")
        self.bucket = env("FERRY_BUCKET")
        self.obs_endpoint = env("FERRY_OBS_ENDPOINT")
        self.prefix = env("FERRY_PREFIX", "ds/")
        self.target_dir = env("FERRY_TARGET_DIR", "data")
        self.share_size = int(env("FERRY_SHARE_SIZE", "1228"))
        self.require_job_ids = env_flag("FERRY_REQUIRE_JOB_IDS", "1")
        self.share_actions = env_flag("FERRY_SHARE_ACTIONS", "1")
        self.poll = Poller(float(env("FERRY_POLL_TIMEOUT", "120")), float(env("FERRY_POLL_INTERVAL", "0.2")))
        if not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError("FERRY_ENDPOINT must start with http:// or https://")

        config = HttpConfig.get_default_config()
        config.timeout = (10, 60)
        config.retry_times = 0
        credentials = BasicCredentials(self.ak, self.sk, self.project)
        # with_endpoints and no with_region: no region lookup, no IAM call (the
        # project id is given), and a plain http:// endpoint is used as it is.
        self.client = (SFSTurboClient.new_builder()
                       .with_http_config(config)
                       .with_credentials(credentials)
                       .with_endpoints([self.endpoint])
                       .build())
        suffix = uuid.uuid4().hex[:8]
        self.share_name = "sdk-scenario-" + suffix
        self.share_id = None
        self.target_id = None
        self.tasks = {}  # type -> task_id
        self.jobs = []  # (what, job_id, expected job types)

    # ---- helpers -----------------------------------------------------------

    def job_id_of(self, resp, what):
        body = raw_json(resp)
        job_id = (body.get("job_id") or body.get("jobId")) if isinstance(body, dict) else None
        if not job_id:
            if self.require_job_ids:
                raise ScenarioError("%s: response body carries no job_id (ferry extension); body: %r"
                                    % (what, resp.raw_content))
            return None
        check(isinstance(job_id, str), "%s: job_id must be a string" % what, job_id)
        return job_id

    def show_share(self):
        return self.client.show_share(ShowShareRequest(share_id=self.share_id))

    def show_target(self):
        return self.client.show_backend_target_info(
            ShowBackendTargetInfoRequest(share_id=self.share_id, target_id=self.target_id))

    def show_task(self, task_id):
        return self.client.show_hpc_cache_task(ShowHpcCacheTaskRequest(share_id=self.share_id, task_id=task_id))

    def list_tasks(self, **filters):
        return self.client.list_hpc_cache_tasks(ListHpcCacheTasksRequest(share_id=self.share_id, **filters))

    def wait_share_active(self, what, done=None):
        def failed(s):
            if s.status in ("300", "303"):
                return "share status %s (%s)" % (s.status, s.status_detail)
            return None
        return self.poll.until(self.show_share, done or (lambda s: s.status == "200"), what, failed)

    def wait_job(self, what, job_id, job_types):
        def failed(j):
            if j.status == "failed":
                return "job failed: error_code %r, fail_reason %r" % (j.error_code, j.fail_reason)
            if j.status not in ("waiting", "running", "success"):
                return "unknown job status %r" % j.status
            return None
        job = self.poll.until(lambda: self.client.show_job_detail(ShowJobDetailRequest(job_id=job_id)),
                              lambda j: j.status == "success", what, failed)
        check_eq(job.job_id, job_id, what + " job_id")
        check(job.job_type in job_types, what + ": job_type %r not in %s" % (job.job_type, job_types))
        check_job_time(job.begin_time, what + " begin_time")
        check_job_time(job.end_time, what + " end_time", allow_empty=True)
        for sub in job.sub_jobs or []:
            check(sub.status in ("waiting", "running", "success", "failed"),
                  what + ": sub job status %r" % sub.status)
        return job

    # ---- steps ---------------------------------------------------------------

    def create_share(self):
        share = Share(
            name=self.share_name,
            share_proto="NFS",
            share_type="STANDARD",
            size=self.share_size,
            availability_zone="az1",
            vpc_id="vpc-ferry",
            subnet_id="subnet-ferry",
            security_group_id="sg-ferry",
            description="ferry SDK scenario",
            metadata=Metadata(expand_type="hpc", hpc_bw="125M"),
        )
        resp = self.client.create_share(CreateShareRequest(body=CreateShareRequestBody(share=share)))
        check(resp.id, "create_share: response has no id", resp)
        check_eq(resp.name, self.share_name, "create_share name")
        check(resp.status in ("100", "200"), "create_share: status %r is not 100/200" % resp.status)
        self.share_id = resp.id
        job_id = self.job_id_of(resp, "create_share")
        if job_id:
            self.jobs.append(("create_share", job_id, ("create_share", "hpc_create_share")))
        step("create share", "id=%s status=%s job=%s http=%s" % (resp.id, resp.status, job_id, resp.status_code))

    def share_active(self):
        s = self.wait_share_active("show_share until status 200")
        check_eq(s.id, self.share_id, "show_share id")
        check_eq(s.name, self.share_name, "show_share name")
        check_eq(s.share_proto, "NFS", "show_share share_proto")
        check(s.size is not None and float(s.size) == float(self.share_size),
              "show_share size %r != %s" % (s.size, self.share_size))
        check(s.created_at is not None, "show_share: created_at missing")
        check(isinstance(s.created_at, datetime.datetime),
              "show_share: created_at %r is not parseable as a datetime" % (s.created_at,))
        step("share active", "status=%s size=%s export_location=%s" % (s.status, s.size, s.export_location))

    def list_shares(self):
        resp = self.client.list_shares(ListSharesRequest(limit=1000, offset=0))
        ids = [s.id for s in resp.shares or []]
        check(self.share_id in ids, "list_shares: share %s not listed" % self.share_id, ids)
        check(resp.count is not None and resp.count >= 1, "list_shares count %r" % resp.count)
        step("list shares", "count=%s" % resp.count)

    def share_actions_step(self):
        new_name = self.share_name + "-r"
        self.client.change_share_name(ChangeShareNameRequest(
            share_id=self.share_id, body=ChangeShareNameReq(change_name=ShareName(name=new_name))))
        s = self.poll.until(self.show_share, lambda s: s.name == new_name, "show_share until renamed")
        self.share_name = s.name
        step("change share name", new_name)

        resp = self.client.update_hpc_share(UpdateHpcShareRequest(
            share_id=self.share_id, body=UpdateHpcShareRequestBody(action="config_gc_time", gc_time=12)))
        check(resp.gc_time in (None, 12), "update_hpc_share gc_time %r" % resp.gc_time)
        step("config gc time", "gc_time=12 echoed=%s" % resp.gc_time)

        new_size = self.share_size + 1228
        resp = self.client.expand_share(ExpandShareRequest(
            share_id=self.share_id, body=ExpandShareRequestBody(extend=Extend(new_size=new_size))))
        check(resp.id in (None, self.share_id), "expand_share id %r" % resp.id)
        job_id = self.job_id_of(resp, "expand_share")
        if job_id:
            self.jobs.append(("expand_share", job_id, ("extend_share",)))
        s = self.wait_share_active("show_share until expanded",
                                   done=lambda s: s.status == "200" and s.size is not None
                                   and float(s.size) == float(new_size) and s.sub_status != "121")
        check(s.sub_status in (None, "", "221"), "show_share sub_status %r after expansion" % s.sub_status)
        self.share_size = new_size
        step("expand share", "size=%s sub_status=%s job=%s" % (s.size, s.sub_status, job_id))

    def create_target(self):
        attrs = ObsTargetAttributes(file_mode=644, dir_mode=755, uid=1000, gid=1000)
        body = CreateBackendTargetRequestBody(
            file_system_path=self.target_dir,
            obs=ObsDataRepository(bucket=self.bucket, endpoint=self.obs_endpoint, attributes=attrs))
        resp = self.client.create_backend_target(CreateBackendTargetRequest(share_id=self.share_id, body=body))
        check(resp.target_id, "create_backend_target: no target_id", resp)
        check_eq(resp.file_system_path, self.target_dir, "create_backend_target file_system_path")
        check(resp.lifecycle in ("CREATING", "AVAILABLE"), "create_backend_target lifecycle %r" % resp.lifecycle)
        check(resp.obs is not None and resp.obs.bucket == self.bucket,
              "create_backend_target obs.bucket", resp.obs)
        check(resp.x_request_id, "create_backend_target: no X-Request-Id header")
        self.target_id = resp.target_id
        job_id = self.job_id_of(resp, "create_backend_target")
        if job_id:
            self.jobs.append(("create_backend_target", job_id, ("create_obs_target",)))
        step("link backend target", "target_id=%s lifecycle=%s job=%s" % (resp.target_id, resp.lifecycle, job_id))

    def target_available(self):
        def failed(t):
            if t.lifecycle in ("MISCONFIGURED", "FAILED"):
                return "lifecycle %s: %s" % (t.lifecycle, t.failure_details and t.failure_details.message)
            return None
        t = self.poll.until(self.show_target, lambda t: t.lifecycle == "AVAILABLE",
                            "show_backend_target_info until AVAILABLE", failed)
        check_eq(t.target_id, self.target_id, "show target target_id")
        check_eq(t.file_system_path, self.target_dir, "show target file_system_path")
        check_eq(t.obs.bucket, self.bucket, "show target obs.bucket")
        check_eq(t.obs.endpoint, self.obs_endpoint, "show target obs.endpoint")
        a = t.obs.attributes
        check(a is not None, "show target: obs.attributes missing")
        check_eq((a.file_mode, a.dir_mode, a.uid, a.gid), (644, 755, 1000, 1000), "show target obs.attributes")
        check(t.creation_time, "show target: creation_time missing")

        lst = self.client.list_backend_targets(ListBackendTargetsRequest(share_id=self.share_id, limit=10))
        ids = [x.target_id for x in lst.targets or []]
        check(self.target_id in ids, "list_backend_targets: target not listed", ids)
        check_eq(lst.count, 1, "list_backend_targets count")
        step("target available", "lifecycle=%s listed=%d" % (t.lifecycle, len(ids)))

    def run_task(self, task_type):
        body = CreateHpcCacheTaskReq(type=task_type, src_target=self.target_dir, src_prefix=self.prefix,
                                     dest_target=self.target_dir, dest_prefix=self.prefix)
        resp = self.client.create_hpc_cache_task(CreateHpcCacheTaskRequest(share_id=self.share_id, body=body))
        check(resp.task_id, "create_hpc_cache_task(%s): no task_id" % task_type, resp)
        task_id = resp.task_id

        def failed(t):
            if t.status not in ("DOING", "SUCCESS", "FAIL"):
                return "unexpected status %r" % t.status
            return None
        t = self.poll.until(lambda: self.show_task(task_id), lambda t: t.status in ("SUCCESS", "FAIL"),
                            "show_hpc_cache_task(%s) until finished" % task_type, failed)
        check_eq(t.status, "SUCCESS", "task %s (%s) status; message %r" % (task_type, task_id, t.message))
        check_eq(t.task_id, task_id, "task task_id")
        check_eq(t.type, task_type, "task type")
        check_eq((t.src_target, t.src_prefix, t.dest_target, t.dest_prefix),
                 (self.target_dir, self.prefix, self.target_dir, self.prefix), "task targets/prefixes")
        start = check_task_time(t.start_time, "task start_time")
        end = check_task_time(t.end_time, "task end_time")
        check(end >= start, "task end_time %s before start_time %s" % (t.end_time, t.start_time))
        check(t.x_request_id, "show_hpc_cache_task: no X-Request-Id header")
        progress = raw_json(t).get("progress")
        self.tasks[task_type] = t
        step("task " + task_type, "id=%s status=%s http=%s progress=%s"
             % (task_id, t.status, resp.status_code, json.dumps(progress, sort_keys=True)))

    def list_task_filters(self):
        all_ids = {t.task_id for t in self.tasks.values()}
        n = len(all_ids)

        def ids(resp):
            return [t.task_id for t in resp.tasks or []]

        r = self.list_tasks()
        check_eq(set(ids(r)), all_ids, "list tasks (no filter) ids")
        check_eq(r.count, n, "list tasks (no filter) count")
        for t in r.tasks:
            check(t.status and t.type and t.start_time is not None, "listed task fields", t)

        for task_type, task in self.tasks.items():
            r = self.list_tasks(type=task_type)
            check_eq(ids(r), [task.task_id], "list tasks type=%s ids" % task_type)
            check_eq(r.count, 1, "list tasks type=%s count" % task_type)

        r = self.list_tasks(status="SUCCESS")
        check_eq((set(ids(r)), r.count), (all_ids, n), "list tasks status=SUCCESS")
        r = self.list_tasks(status="FAIL")
        check_eq((ids(r), r.count), ([], 0), "list tasks status=FAIL")
        r = self.list_tasks(type="export", status="SUCCESS")
        check_eq((ids(r), r.count), ([self.tasks["export"].task_id], 1), "list tasks type=export&status=SUCCESS")

        # Paging: count is the number of matching tasks, not the page length.
        p1 = self.list_tasks(limit=2, offset=0)
        p2 = self.list_tasks(limit=2, offset=2)
        check_eq((len(ids(p1)), p1.count), (2, n), "list tasks limit=2 offset=0 (page length, count)")
        check_eq((len(ids(p2)), p2.count), (n - 2, n), "list tasks limit=2 offset=2 (page length, count)")
        check_eq(set(ids(p1)) | set(ids(p2)), all_ids, "pages 1+2 together")
        check(not set(ids(p1)) & set(ids(p2)), "pages 1 and 2 overlap", ids(p1), ids(p2))
        p3 = self.list_tasks(limit=2, offset=n)
        check_eq(ids(p3), [], "list tasks offset past the end")

        starts = [check_task_time(t.start_time, "start_time") for t in self.tasks.values()]
        lo = (min(starts) - datetime.timedelta(minutes=5)).strftime(TASK_TIME_FORMAT)
        hi = (max(starts) + datetime.timedelta(minutes=5)).strftime(TASK_TIME_FORMAT)
        r = self.list_tasks(start_time=lo, end_time=hi)
        check_eq((set(ids(r)), r.count), (all_ids, n), "list tasks start_time=%s end_time=%s" % (lo, hi))
        r = self.list_tasks(start_time="2000-01-01T00:00:00", end_time="2000-01-02T00:00:00")
        check_eq((ids(r), r.count), ([], 0), "list tasks in a window in 2000")
        future = (max(starts) + datetime.timedelta(days=1)).strftime(TASK_TIME_FORMAT)
        r = self.list_tasks(start_time=future)
        check_eq((ids(r), r.count), ([], 0), "list tasks start_time=%s" % future)
        step("list tasks with filters", "count=%d, type/status/limit/offset/start_time/end_time checked" % n)

    def delete_task(self):
        task = self.tasks.pop("import_metadata")
        resp = self.client.delete_hpc_cache_task(
            DeleteHpcCacheTaskRequest(share_id=self.share_id, task_id=task.task_id))

        def gone():
            try:
                t = self.show_task(task.task_id)
            except sdk_exc.ClientRequestException as e:
                return e
            check(t.status in ("DELETING", task.status),
                  "deleted task shows status %r instead of DELETING/error" % t.status)
            return None
        self.poll.until(gone, lambda e: e is not None, "show_hpc_cache_task after delete until error")
        expect_sdk_error(lambda: self.show_task(task.task_id), 400, "SFS.TURBO.0106", "show deleted task")
        r = self.list_tasks()
        check(task.task_id not in [t.task_id for t in r.tasks or []], "deleted task still listed")
        check_eq(r.count, len(self.tasks), "list tasks count after delete")
        step("delete task", "id=%s http=%s; show -> SFS.TURBO.0106" % (task.task_id, resp.status_code))

    def update_target(self):
        attrs = ObsTargetAttributes(file_mode=640, dir_mode=750, uid=1001, gid=1002)
        resp = self.client.update_obs_target_attributes(UpdateObsTargetAttributesRequest(
            share_id=self.share_id, target_id=self.target_id,
            body=UpdateObsTargetAttributesRequestBody(attributes=attrs)))
        check_eq(resp.target_id, self.target_id, "update attributes target_id")
        if resp.attributes is not None:
            a = resp.attributes
            check_eq((a.file_mode, a.dir_mode, a.uid, a.gid), (640, 750, 1001, 1002), "update attributes echo")
        a = self.show_target().obs.attributes
        check_eq((a.file_mode, a.dir_mode, a.uid, a.gid), (640, 750, 1001, 1002), "target attributes after update")
        step("update target attributes", "file_mode=640 dir_mode=750 uid=1001 gid=1002")

        policy = ObsDataRepositoryPolicy(auto_export_policy=AutoExportPolicy(
            events=["NEW", "CHANGED"], prefix=self.prefix, suffix=".bin"))
        resp = self.client.update_obs_target_policy(UpdateObsTargetPolicyRequest(
            share_id=self.share_id, target_id=self.target_id,
            body=UpdateObsTargetPolicyRequestBody(policy=policy)))
        check_eq(resp.target_id, self.target_id, "update policy target_id")
        check(resp.policy is not None and resp.policy.auto_export_policy is not None,
              "update policy: response has no policy.auto_export_policy", resp)
        p = resp.policy.auto_export_policy
        check_eq((sorted(p.events or []), p.prefix, p.suffix), (["CHANGED", "NEW"], self.prefix, ".bin"),
                 "update policy echo")
        p = self.show_target().obs.policy.auto_export_policy
        check_eq((sorted(p.events or []), p.prefix, p.suffix), (["CHANGED", "NEW"], self.prefix, ".bin"),
                 "target policy after update")
        step("update target policy", "events=NEW,CHANGED prefix=%s suffix=.bin" % self.prefix)

    def error_shapes(self):
        expect_sdk_error(lambda: self.client.show_job_detail(ShowJobDetailRequest(job_id="no-such-job")),
                         404, "SFS.TURBO.0019", "show unknown job")
        expect_sdk_error(lambda: self.client.show_share(ShowShareRequest(share_id=str(uuid.uuid4()))),
                         404, "SFS.TURBO.0002", "show unknown share")
        expect_sdk_error(lambda: self.show_task("no-such-task"), 400, "SFS.TURBO.0106", "show unknown task")
        step("error shapes", "unknown job/share/task -> 0019/0002/0106")

    def show_jobs(self):
        for what, job_id, job_types in self.jobs:
            job = self.wait_job("job of " + what, job_id, job_types)
            step("job of " + what, "job_id=%s type=%s status=%s" % (job.job_id, job.job_type, job.status))

    def unlink_target(self):
        resp = self.client.delete_backend_target(DeleteBackendTargetRequest(
            share_id=self.share_id, target_id=self.target_id, delete_data_in_file_system=False))
        if resp.target_id is not None:
            check_eq(resp.target_id, self.target_id, "delete_backend_target target_id")
        if resp.delete_data_in_file_system is not None:
            check_eq(resp.delete_data_in_file_system, False, "delete_backend_target delete_data_in_file_system")
        check(resp.lifecycle in (None, "DELETING"), "delete_backend_target lifecycle %r" % resp.lifecycle)
        job_id = self.job_id_of(resp, "delete_backend_target")

        def gone():
            try:
                t = self.show_target()
            except sdk_exc.ClientRequestException as e:
                return e
            check(t.lifecycle in ("DELETING", "AVAILABLE"), "target lifecycle %r while unlinking" % t.lifecycle)
            return None
        e = self.poll.until(gone, lambda e: e is not None, "show_backend_target_info until gone")
        check_eq(e.status_code, 404, "show unlinked target HTTP status (error_code %s)" % e.error_code)
        lst = self.client.list_backend_targets(ListBackendTargetsRequest(share_id=self.share_id))
        check_eq((lst.targets or [], lst.count), ([], 0), "list_backend_targets after unlink")
        if job_id:
            job = self.wait_job("job of delete_backend_target", job_id, ("delete_obs_target",))
            check_eq(job.status, "success", "unlink job status")
        step("unlink target", "delete_data_in_file_system=false http=%s job=%s" % (resp.status_code, job_id))

    def delete_share(self):
        resp = self.client.delete_share(DeleteShareRequest(share_id=self.share_id))
        job_id = self.job_id_of(resp, "delete_share")

        def gone():
            try:
                s = self.show_share()
            except sdk_exc.ClientRequestException as e:
                return e
            check(s.status in ("200", "400"), "share status %r while deleting" % s.status)
            return None
        e = self.poll.until(gone, lambda e: e is not None, "show_share until gone")
        check_eq((e.status_code, e.error_code), (404, "SFS.TURBO.0002"), "show deleted share")
        if job_id:
            self.wait_job("job of delete_share", job_id, ("delete_share",))
        lst = self.client.list_shares(ListSharesRequest())
        check(self.share_id not in [s.id for s in lst.shares or []], "deleted share still listed")
        step("delete share", "http=%s job=%s" % (resp.status_code, job_id))

    def run(self):
        print("scenario: endpoint=%s project=%s bucket=%s prefix=%s" % (
            self.endpoint, self.project, self.bucket, self.prefix), flush=True)
        self.create_share()
        self.share_active()
        self.list_shares()
        if self.share_actions:
            self.share_actions_step()
        self.create_target()
        self.target_available()
        for task_type in TASK_TYPES:
            self.run_task(task_type)
        self.list_task_filters()
        self.delete_task()
        self.update_target()
        self.error_shapes()
        self.show_jobs()
        self.unlink_target()
        self.delete_share()
        print("scenario passed: %d steps" % STEP[0], flush=True)


def main():
    try:
        scenario = Scenario()
    except ConfigError as e:
        print("scenario: configuration error: %s" % e, file=sys.stderr)
        return 2
    try:
        scenario.run()
    except ScenarioError as e:
        print("FAIL after step %d: %s" % (STEP[0], e), file=sys.stderr)
        return 1
    except sdk_exc.SdkException as e:
        print("FAIL after step %d: SDK error: %s" % (STEP[0], e), file=sys.stderr)
        traceback.print_exception(e, chain=False)
        return 1
    except Exception as e:  # anything the SDK does not wrap: still a clear FAIL line
        print("FAIL after step %d: %s: %s" % (STEP[0], type(e).__name__, e), file=sys.stderr)
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
