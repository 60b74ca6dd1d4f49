// On the page a provider's redirect back shows: what the address carried (the code, the
// state) is used up, so it leaves the address bar and the browser's history.
history.replaceState(null, "", location.pathname);
