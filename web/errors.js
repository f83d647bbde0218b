// Typed errors of the edgevae JavaScript package: library code throws these; only the command
// line (evz.mjs) and the page turn them into one-line messages. Same classes as runtime/errors.py.

/** Base class: every error edgevae throws on purpose is one of these. */
export class EdgeVAEError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** A user-supplied input (file, array, argument) is missing, unreadable or malformed. */
export class InputError extends EdgeVAEError {}

/** A model bundle is missing, partial, tampered with, or of an unsupported version. */
export class BundleError extends EdgeVAEError {}

/** A .evz container is damaged, truncated, of another version, or was made by another model. */
export class ContainerError extends InputError {}
