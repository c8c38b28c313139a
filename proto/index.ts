// The one definition of the wire contract shared by the coordinator, the
// reference worker, the CLI and the tests.
export * from './digest.ts';
export * from './events.ts';
export * from './fields.ts';
export * from './messages.ts';
export * from './problems.ts';
export * from './rest.ts';
