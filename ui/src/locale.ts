// Under LANG=C (CI machines, minimal installs) WebKitGTK reports navigator.language as
// "C", which is not a BCP 47 tag: Intl then throws, and uPlot builds an Intl.NumberFormat
// when its module loads, so the whole app would fail to start. Imported before anything
// else, this replaces such a language with en-US.

function isValidLocale(tag: string): boolean {
  try {
    new Intl.NumberFormat(tag);
    return true;
  } catch {
    return false;
  }
}

if (!isValidLocale(navigator.language)) {
  Object.defineProperty(Navigator.prototype, "language", { get: () => "en-US", configurable: true });
  Object.defineProperty(Navigator.prototype, "languages", { get: () => ["en-US"], configurable: true });
}
