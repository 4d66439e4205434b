"""A device owner driving strata-relay like a browser (login form, CSRF,
the claim page) and through its JSON API with a token made on the tokens
page. Used by scripts/demo-owner and scripts/bench-agent.

Secrets (the password, the API token) come from files or are made here;
none goes on a command line or to the output.
"""

import http.cookiejar
import json
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request


def _csrf(html):
    return re.search(r'name="_csrf" value="([0-9a-f]{64})"', html).group(1)


def agent_code(log_path):
    """The last enrollment user code in an agent's log, or None."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", open(log_path, errors="replace").read())
    codes = re.findall(r"user_code=([A-Z]{4}-[A-Z]{4})", text)
    return codes[-1] if codes else None


class Owner:
    """A logged-in owner of the organization the login lands in."""

    def __init__(self, url, ca_file, email, password):
        self.url = url
        ctx = ssl.create_default_context(cafile=ca_file)
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=ctx),
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
        )
        _, html = self.page("/login")
        where, html = self.page(
            "/login", {"email": email, "password": password, "_csrf": _csrf(html)}
        )
        self.org = urllib.parse.urlparse(where).path.split("/")[2]
        _, html = self.page(
            f"/o/{self.org}/tokens",
            {"name": f"script-{time.time_ns()}", "role": "owner", "_csrf": _csrf(html)},
        )
        self.token = re.search(r'id="new-token">\s*([^<\s]+)', html).group(1)

    def page(self, path, form=None):
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        with self.opener.open(self.url + path, data=data, timeout=20) as r:
            return r.geturl(), r.read().decode()

    def claim(self, code, name):
        _, html = self.page(f"/claim?code={code}")
        self.page(
            "/claim",
            {"code": code, "org": self.org, "name": name, "decision": "approve", "_csrf": _csrf(html)},
        )

    def api(self, method, path, body=None):
        """(status, parsed JSON or text) of an API call under the organization."""
        req = urllib.request.Request(
            f"{self.url}/api/v1/o/{self.org}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with self.opener.open(req, timeout=30) as r:
                text = r.read().decode()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def online_sender(self, within_s=30):
        """The first online sender, waiting up to `within_s`."""
        end = time.time() + within_s
        while time.time() < end:
            status, senders = self.api("GET", "/senders")
            online = [s for s in senders if s["online"]] if status == 200 else []
            if online:
                return online[0]
            time.sleep(0.2)
        return None
