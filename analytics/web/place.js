// Keeping the user's place through a live redraw: the scroll position, the focused element (found again by what
// it shows: its data-testid and the caller, callee, trace or quantile it is for), and the parts a page marks to
// keep as they are (data-keep, e.g. the what-if section with its choices and answer).
const IDENTITY = ["data-testid", "data-caller", "data-callee", "data-trace-id", "data-quantile", "data-service",
                  "data-field", "href"];

/** True while a redraw would lose something: text selected in the page, or a field being typed in. */
export function isBusy(page) {
  const selection = window.getSelection();
  if (selection && !selection.isCollapsed && page.contains(selection.anchorNode)) return true;
  const active = document.activeElement;
  return Boolean(active && page.contains(active) && active.matches("input, textarea, select") &&
                 !active.closest("[data-keep]"));
}

function identity(element, page) {
  if (!element || element === document.body || !page.contains(element)) return null;
  const attributes = IDENTITY.filter((name) => element.hasAttribute(name));
  if (!attributes.length) return null;
  return element.localName + attributes.map((name) => `[${name}="${CSS.escape(element.getAttribute(name))}"]`)
    .join("");
}

function move(kept, slot) {
  const parent = slot.parentNode;
  // moveBefore keeps focus, an open <select> and running transitions; insertBefore would reset them
  if (parent.moveBefore) parent.moveBefore(kept, slot);
  else parent.insertBefore(kept, slot);
  slot.remove();
}

/** True when `content` draws exactly what is on screen (`previous`), its kept parts aside: nothing to redraw, and a
 * tooltip being read or a hovered card stays as it is. */
export function drawsTheSame(previous, content) {
  if (!previous) return false;
  const copy = previous.cloneNode(true);
  for (const kept of copy.querySelectorAll("[data-keep]")) {
    const slot = document.createElement("div");
    slot.setAttribute("data-keep-slot", kept.getAttribute("data-keep"));
    kept.replaceWith(slot);
  }
  return copy.outerHTML === content.outerHTML;
}

/** Replace the page's content with `content`, which a page drew knowing the old one (render's `previous`). */
export function redrawKeepingPlace(page, content) {
  const [x, y] = [window.scrollX, window.scrollY];
  const focused = identity(document.activeElement, page);
  const previous = page.firstElementChild;
  page.append(content);  // both in the document for a moment (same task: never painted), so kept parts can move
  for (const slot of content.querySelectorAll("[data-keep-slot]")) {
    const kept = previous?.querySelector(`[data-keep="${CSS.escape(slot.getAttribute("data-keep-slot"))}"]`);
    if (kept) move(kept, slot);
  }
  previous?.remove();
  if (focused && !page.contains(document.activeElement)) page.querySelector(focused)?.focus({preventScroll: true});
  window.scrollTo(x, y);
}
