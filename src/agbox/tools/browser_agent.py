"""act / observe / extract: the page tools that need a language model.

The model is an operator-configured OpenAI-compatible chat-completions endpoint (settings
``browser_model_url``, ``browser_model``, ``browser_model_api_key``). Each call sends the model one JSON
object: the task, the instruction, the page's URL, title, visible text and its interactive elements (each
with a CSS selector agbox can act on), and for extract the JSON schema; the model answers JSON:

- act: ``{"method": "click"|"fill"|"none", "selector": str, "arguments": {"value"?: str}, "description": str}``;
- observe: ``{"elements": [{"selector", "description", "method", "arguments"?}]}``;
- extract: the object itself, shaped by the schema.

Actions run through CDP in the page (tools/cdp.py). The ``*_async`` tools start a task and answer
``{"task_id"}``; ``page_use_get_*_result`` polls it (the official SDK polls every 5-8 s).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import httpx

from agbox.errors import InvalidRequestError
from agbox.settings import Settings
from agbox.tools.base import ToolContext, ToolOutput, arg_str, json_text
from agbox.tools.cdp import CdpError
from agbox.tools.pages import current_page, page_id_arg

MODEL_TIMEOUT_S = 60.0
TEXT_LIMIT = 6000
ELEMENT_LIMIT = 150
TASKS_STATE = "browser_agent_tasks"
METHODS = ("click", "fill", "none")

SYSTEM_PROMPT = (
    "You operate a web page for a user. The user message is a JSON object with the task ('act', 'observe' or "
    "'extract'), the instruction, and the page: url, title, visible text, and interactive elements, each with a "
    "CSS selector. Answer with one JSON object only. act: {\"method\": \"click\"|\"fill\"|\"none\", \"selector\": "
    "<an element's selector>, \"arguments\": {\"value\": <text to fill>}, \"description\": <what you did>}. "
    "observe: {\"elements\": [{\"selector\", \"description\", \"method\": \"click\"|\"fill\", \"arguments\": {}}]} "
    "for the elements that match the instruction. extract: the requested data as a JSON object that follows "
    "the given JSON schema, taken from the page.")

# Runs in the page: interactive elements get a stable selector (their id, else a data attribute we add).
SNAPSHOT_SCRIPT = """(() => {
  const visible = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const found = [];
  const candidates = document.querySelectorAll(
    'a[href], button, input, textarea, select, [role=button], [role=link], [onclick], [contenteditable=true]');
  let next = 0;
  for (const el of candidates) {
    if (!visible(el) || found.length >= LIMIT) continue;
    let selector;
    if (el.id && document.querySelectorAll('#' + CSS.escape(el.id)).length === 1) selector = '#' + CSS.escape(el.id);
    else {
      if (!el.dataset.agboxRef) el.dataset.agboxRef = 'r' + (next++) + '-' + Math.random().toString(36).slice(2, 6);
      selector = '[data-agbox-ref="' + el.dataset.agboxRef + '"]';
    }
    found.push({selector, tag: el.tagName.toLowerCase(), type: el.getAttribute('type') || '',
                text: (el.innerText || el.value || el.getAttribute('aria-label') || '').trim().slice(0, 80),
                name: el.getAttribute('name') || '', placeholder: el.getAttribute('placeholder') || ''});
  }
  return {url: location.href, title: document.title,
          text: (document.body ? document.body.innerText : '').slice(0, TEXT), elements: found};
})()""".replace("LIMIT", str(ELEMENT_LIMIT)).replace("TEXT", str(TEXT_LIMIT))


class ModelError(Exception):
    pass


def model_configured(settings: Settings) -> bool:
    return bool(settings.browser_model_url)


NO_MODEL = ("act, observe and extract need a language model, and this agbox server has none configured: set "
            "AGBOX_BROWSER_MODEL_URL (an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1), "
            "AGBOX_BROWSER_MODEL and AGBOX_BROWSER_MODEL_API_KEY. Without one, drive the page with Playwright over "
            "the CDP link, or with page_use_navigate, browser_click, browser_type and browser_page_text.")


async def ask_model(settings: Settings, request: dict[str, Any]) -> dict[str, Any]:
    """One chat completion; the model's answer as a JSON object."""
    assert settings.browser_model_url is not None
    url = settings.browser_model_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {settings.browser_model_api_key}"} if settings.browser_model_api_key else {}
    body = {"model": settings.browser_model, "temperature": 0, "response_format": {"type": "json_object"},
            "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": json.dumps(request, ensure_ascii=False)}]}
    try:
        async with httpx.AsyncClient(timeout=MODEL_TIMEOUT_S) as client:
            response = await client.post(url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise ModelError(f"the language model at {settings.browser_model_url} could not be reached: {exc}") from None
    if response.status_code != 200:
        raise ModelError(f"the language model answered HTTP {response.status_code}: {response.text[:300]}")
    try:
        content = response.json()["choices"][0]["message"]["content"]
        text = str(content).strip()
        if text.startswith("```"):  # some models fence their JSON
            text = text.strip("`").removeprefix("json").strip()
        answer = json.loads(text)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ModelError(f"the language model's answer is not a JSON object: {exc}") from None
    if not isinstance(answer, dict):
        raise ModelError("the language model's answer is not a JSON object")
    return answer


async def snapshot(page: Any) -> dict[str, Any]:
    found: dict[str, Any] = await page.evaluate(SNAPSHOT_SCRIPT)
    return found


async def perform(page: Any, method: str, selector: str, arguments: dict[str, Any]) -> str:
    """Run one action in the page; '' on success, else what went wrong."""
    if method == "none":
        return ""
    if method not in METHODS:
        return f"unknown method {method!r} (agbox performs click and fill)"
    if method == "click":
        action = "el.scrollIntoView({block: 'center'}); el.click();"
    else:
        value = json.dumps(str(arguments.get("value", arguments.get("text", ""))))
        action = (f"el.focus(); el.value = {value}; el.dispatchEvent(new Event('input', {{bubbles: true}})); "
                  "el.dispatchEvent(new Event('change', {bubbles: true}));")
    script = (f"(() => {{ const el = document.querySelector({json.dumps(selector)}); "
              f"if (!el) return 'no element matches ' + {json.dumps(selector)}; {action} return ''; }})()")
    return str(await page.evaluate(script) or "")


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# ---- the three tasks (page is a tools.browser.Page) -----------------------------------------------------


async def act(settings: Settings, page: Any, args: dict[str, Any]) -> dict[str, Any]:
    action = arg_str(args, "action")
    assert action is not None
    direct: Any = None
    if action.lstrip().startswith("{"):  # an ObserveResult the SDK hands back: {"method", "arguments"}
        try:
            direct = json.loads(action)
        except ValueError:
            direct = None
    if isinstance(direct, dict) and isinstance(direct.get("method"), str):
        arguments = _object(direct.get("arguments"))
        step = {"method": direct["method"], "selector": str(arguments.get("selector", "")), "arguments": arguments,
                "description": f"{direct['method']} {arguments.get('selector', '')}"}
    else:
        variables = args.get("variables") or {}
        for name, value in variables.items() if isinstance(variables, dict) else []:
            action = action.replace(f"%{name}%", str(value))
        step = await ask_model(settings, {"task": "act", "instruction": action, "page": await snapshot(page)})
    method, selector = str(step.get("method", "")), str(step.get("selector", ""))
    arguments = _object(step.get("arguments"))
    problem = await perform(page, method, selector, arguments)
    record = {"method": method, "selector": selector, "arguments": arguments,
              "description": str(step.get("description", "")), "success": not problem}
    if problem:
        record["error"] = problem
    return {"steps": [record], "is_done": True, "success": not problem}


async def observe(settings: Settings, page: Any, args: dict[str, Any]) -> list[dict[str, Any]]:
    instruction = arg_str(args, "instruction")
    answer = await ask_model(settings, {"task": "observe", "instruction": instruction, "page": await snapshot(page)})
    items = answer.get("elements")
    if not isinstance(items, list):
        raise ModelError("the language model's observe answer has no 'elements' list")
    out = []
    for item in items:
        if not isinstance(item, dict) or not item.get("selector"):
            continue
        arguments = _object(item.get("arguments"))
        # act() gets back only method and arguments, so the selector travels inside the arguments too.
        arguments = {**arguments, "selector": str(item["selector"])}
        out.append({"selector": str(item["selector"]), "description": str(item.get("description", "")),
                    "method": str(item.get("method", "click")), "arguments": json.dumps(arguments)})
    return out


async def extract(settings: Settings, page: Any, args: dict[str, Any]) -> dict[str, Any]:
    instruction = arg_str(args, "instruction")
    raw_schema = args.get("field_schema") or "{}"
    if not isinstance(raw_schema, str):
        raise InvalidRequestError("argument 'field_schema' must be a string ('schema: <JSON schema>')")
    try:
        schema = json.loads(raw_schema.removeprefix("schema:").strip() or "{}")
    except ValueError as exc:
        raise InvalidRequestError(f"argument 'field_schema' is not 'schema: <JSON schema>': {exc}") from None
    return await ask_model(settings, {"task": "extract", "instruction": instruction, "schema": schema,
                                      "page": await snapshot(page)})


# ---- tool handlers ---------------------------------------------------------------------------------------


def _tasks(ctx: ToolContext) -> dict[str, asyncio.Task[Any]]:
    tasks: dict[str, asyncio.Task[Any]] = ctx.state.setdefault(TASKS_STATE, {})
    return tasks


async def run_task(ctx: ToolContext, kind: str, args: dict[str, Any]) -> Any:
    if not model_configured(ctx.settings):
        raise ModelError(NO_MODEL)
    async with current_page(ctx, page_id_arg(args)) as page:
        if kind == "act":
            return await act(ctx.settings, page, args)
        if kind == "observe":
            return await observe(ctx.settings, page, args)
        return await extract(ctx.settings, page, args)


def tool_now(kind: str) -> Any:
    async def handler(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
        try:
            return ToolOutput(json_text(await run_task(ctx, kind, args)))
        except (ModelError, CdpError) as exc:
            return ToolOutput(str(exc), is_error=True)
    return handler


def tool_start(kind: str) -> Any:
    async def handler(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
        if not model_configured(ctx.settings):
            return ToolOutput(NO_MODEL, is_error=True)
        arg_str(args, "instruction" if kind != "act" else "action")  # a missing one is an error now, not later
        task_id = f"{kind}-{secrets.token_hex(6)}"
        _tasks(ctx)[task_id] = asyncio.get_running_loop().create_task(run_task(ctx, kind, args))
        return ToolOutput(json_text({"task_id": task_id}))
    return handler


def tool_result(kind: str) -> Any:
    async def handler(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
        task_id = arg_str(args, "task_id")
        task = _tasks(ctx).get(task_id or "")
        if task is None or not (task_id or "").startswith(kind):
            return ToolOutput(f"no {kind} task {task_id}", is_error=True)
        if not task.done():
            if kind == "act":
                return ToolOutput(json_text({"steps": [], "is_done": False, "success": False}))
            return ToolOutput("", is_error=True)  # the SDK polls again on an empty or failed result
        del _tasks(ctx)[task_id or ""]
        error = task.exception()
        if error is not None:
            if kind == "act":
                return ToolOutput(json_text({"steps": str(error), "is_done": True, "success": False}))
            return ToolOutput(str(error), is_error=True)
        return ToolOutput(json_text(task.result()))
    return handler
