// On a page whose button connects an account for an app: the button works only once the
// window has had the focus for a moment. A page of the app's could otherwise bring this
// one up under a double click begun on its own (a popup that closes at the first click),
// and the second click would land on the button unseen.
(() => {
  const MOMENT_MS = 700;
  const buttons = document.querySelectorAll("button[data-after-a-moment]");
  let timer = null;
  const off = () => {
    clearTimeout(timer);
    for (const b of buttons) b.disabled = true;
  };
  const soon = () => {
    off();
    timer = setTimeout(() => {
      for (const b of buttons) b.disabled = false;
    }, MOMENT_MS);
  };
  window.addEventListener("blur", off);
  window.addEventListener("focus", soon);
  document.addEventListener("visibilitychange", () =>
    document.visibilityState === "visible" ? soon() : off());
  soon();
})();
