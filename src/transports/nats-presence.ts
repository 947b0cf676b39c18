/**
 * Presence on a nats bus: who is a member, told by the members themselves. A member claims its
 * id (a request on its member subject: the server answers "no responders" at once when nobody
 * holds it), then, once subscribed, asks everyone present to answer (a query with a short
 * collection window, `joinWindow`), then says hello. Members heartbeat every `heartbeatInterval`
 * ms; a member not heard from for `presenceTimeout` ms is gone (a peer that heartbeats more slowly
 * gets 2.5 of its own intervals); a member that closes says bye. Every member has an incarnation
 * (epoch): a new one of an id replaces the old, and one that is over is never taken back.
 *
 * The transport gives this module a PresenceLink (publish a control message, hear of joins and
 * leaves, report errors, and its own work per member on each sweep) and hands it the messages of
 * the presence subject, the inbox and the claims on its member subject.
 *
 * A transport built on this one (hybrid) names itself in every presence message of its members
 * (NatsHooks.flavor) and adds fields of its own; a member whose presence names another transport
 * is refused: an error naming it, and it never counts as a member.
 */
import { debuglog } from 'node:util';
import { ShmbusError, duplicateId } from '../errors';
import { otherTransport } from './refusal';
import { show } from '../ids';
import { idToken, tokenId, type Control, type ControlSender, type ReceivedControl, type Said, type Subjects } from './nats-wire';
import type { MemberId } from './transport';

const debug = debuglog('shmbus');

/** How often expiry is checked (and the transport's per-member work done), in ms at the most. */
export const SWEEP_MS = 250;

export interface PresenceTuning {
  heartbeatInterval: number;
  presenceTimeout: number;
  joinWindow: number;
  claimTimeout: number;
}

/** Another live member. */
export interface Peer {
  readonly id: MemberId;
  readonly token: string;
  /** Its member subject, where frames to it alone go. */
  readonly subject: string;
  readonly epoch: number;
  lastSeen: number;
  /** The peer's own heartbeat interval (it may differ from this member's): expiry allows for it. */
  interval: number;
}

/** This member as presence sees it. */
export interface Self {
  readonly id: MemberId;
  readonly busName: string;
  readonly epoch: number;
  readonly instance: string;
}

/** What presence needs from the transport. */
export interface PresenceLink {
  /** Publishes a control message of this member's. */
  publish(subject: string, message: Control, reply?: string): void;
  /** `peer` became a member. */
  joined(peer: Peer): void;
  /** `peer` left or died (`why`, for the debug log). */
  left(peer: Peer, why: string): void;
  /** Something the application should hear about. */
  report(err: Error): void;
  /** On each sweep, for each live member: the transport's own checks. */
  sweep(peer: Peer, now: number): void;
}

/**
 * What a transport built on the nats one adds. `flavor`: the transport its members' presence
 * names (absent: 'nats'); a member whose presence names another is refused. `presence`: the fields
 * added to this member's presence messages (read each time one is sent). `heard`: the fields of
 * each presence message of a member, once it counts as one.
 */
export interface NatsHooks {
  flavor?: string;
  presence?: Record<string, unknown>;
  heard?(id: MemberId, extra: Record<string, unknown>): void;
}

export type PresenceState = 'new' | 'joining' | 'member' | 'closed';

type ClaimAnswer = { kind: 'taken' | 'joining'; instance: string | undefined } | 'none';

export class Presence {
  state: PresenceState = 'new';
  readonly members = new Map<MemberId, Peer>();
  /** Incarnations that are over (said bye, or replaced by a newer one): ignored if heard again. */
  private readonly deadEpochs = new Map<MemberId, number>();
  private hbTimer?: NodeJS.Timeout;
  private sweepTimer?: NodeJS.Timeout;
  private lastSweep = 0;
  private held = true;
  private lostClaim?: string;
  private claimAnswer?: (answer: ClaimAnswer) => void;
  private duplicateReported = false;
  /** When this member's connection last came back: for a while after, other members are still reconnecting. */
  private reconnectedAt = 0;

  constructor(
    private readonly self: Self,
    private readonly subjects: Subjects,
    private readonly tune: PresenceTuning,
    private readonly link: PresenceLink,
    private readonly hooks: NatsHooks = {},
  ) {
    this.flavor = hooks.flavor ?? 'nats';
    this.sender = { id: self.id, epoch: self.epoch, instance: self.instance, heartbeatInterval: tune.heartbeatInterval };
  }

  /** The sender fields of this member's control messages. */
  readonly sender: ControlSender;
  private readonly flavor: string;

  /** What this member says of itself in its presence messages. */
  private said(): Said {
    return { flavor: this.flavor, extra: this.hooks.presence ?? {} };
  }

  // -------------------------------------------------------------------------------------------
  // Joining and leaving

  /** Claims the id: resolves undefined when it is free (or this member won a tie), else who holds it. */
  async claim(): Promise<string | undefined> {
    const answer = await new Promise<ClaimAnswer | 'timeout'>((resolve) => {
      const timer = setTimeout(() => resolve('timeout'), this.tune.claimTimeout);
      this.claimAnswer = (a) => {
        clearTimeout(timer);
        this.claimAnswer = undefined;
        resolve(a);
      };
      const replyTo = this.subjects.claimAnswers;
      this.link.publish(this.subjects.member(idToken(this.self.id)), { kind: 'claim', replyTo }, replyTo);
    });
    if (this.lostClaim !== undefined) return this.lostClaim;
    if (answer === 'none') return undefined;
    if (answer === 'timeout') return `a process connected to the NATS server (subscribed under this id, silent for ${this.tune.claimTimeout} ms)`;
    if (answer.kind === 'taken') return 'a live member on the NATS server';
    if (answer.instance !== undefined && answer.instance < this.self.instance) return 'another process that is opening it now';
    return undefined;
  }

  /**
   * Once subscribed: asks everyone present to answer within the join window, then says hello and
   * heartbeats from then on. Rejects ERR_SHMBUS_DUPLICATE_ID if another process won the id meanwhile.
   */
  async join(): Promise<void> {
    this.link.publish(this.subjects.presence, { kind: 'query', replyTo: this.subjects.queryAnswers, rejoin: false, ...this.said() });
    await new Promise((resolve) => setTimeout(resolve, this.tune.joinWindow));
    if (this.lostClaim !== undefined) throw duplicateId(this.self.id, this.self.busName, this.lostClaim);
    if (this.state !== 'joining') throw new ShmbusError('ERR_SHMBUS_CLOSED', 'the bus was closed while it was opening');
    this.state = 'member';
    this.link.publish(this.subjects.presence, { kind: 'hello', ...this.said() });
    this.hbTimer = setInterval(() => this.heartbeat(), this.tune.heartbeatInterval);
    this.lastSweep = Date.now();
    this.sweepTimer = setInterval(() => this.sweep(), this.sweepPeriod);
    this.hold(this.held);
  }

  /** Leaves: says bye if this was a member. */
  leave(): void {
    const wasMember = this.state === 'member';
    this.state = 'closed';
    this.claimAnswer?.('none');
    this.stopTimers();
    if (wasMember) this.link.publish(this.subjects.presence, { kind: 'bye' });
    this.members.clear();
  }

  /** The connection came back: tell everyone this member is here, and hear from everyone who is. */
  reconnected(): void {
    this.reconnectedAt = Date.now();
    if (this.state !== 'member') return;
    this.link.publish(this.subjects.presence, { kind: 'query', replyTo: this.subjects.queryAnswers, rejoin: true, ...this.said() });
    this.heartbeat();
  }

  /** The connection is closed for good: this member is alone. */
  connectionClosed(): void {
    for (const id of [...this.members.keys()]) this.remove(id, 'connection closed');
    this.stopTimers();
  }

  /** Whether this member's timers keep the event loop alive. */
  hold(held: boolean): void {
    this.held = held;
    const method = held ? 'ref' : 'unref';
    this.hbTimer?.[method]();
    this.sweepTimer?.[method]();
  }

  private stopTimers(): void {
    clearInterval(this.hbTimer);
    clearInterval(this.sweepTimer);
  }

  private heartbeat(): void {
    if (this.state === 'member') this.link.publish(this.subjects.presence, { kind: 'heartbeat', ...this.said() });
  }

  // -------------------------------------------------------------------------------------------
  // Members

  /** A sign of life from `id` in incarnation `epoch`: returns its record (new or renewed), or undefined to ignore. */
  seen(id: MemberId, epoch: number): Peer | undefined {
    if (id === this.self.id) {
      if (epoch !== this.self.epoch) this.duplicateSeen();
      return undefined;
    }
    if (this.deadEpochs.get(id) === epoch) return undefined;
    let peer = this.members.get(id);
    if (peer && peer.epoch !== epoch) {
      // A new incarnation of the id: the old one is over.
      this.deadEpochs.set(id, peer.epoch);
      this.remove(id, 'replaced by a new incarnation');
      peer = undefined;
    }
    const now = Date.now();
    if (peer) {
      peer.lastSeen = now;
      return peer;
    }
    const token = idToken(id);
    peer = { id, token, subject: this.subjects.member(token), epoch, lastSeen: now, interval: 0 };
    this.members.set(id, peer);
    debug('nats %s: %s joined (epoch %d)', this.self.busName, id, epoch);
    this.link.joined(peer);
    return peer;
  }

  remove(id: MemberId, why: string): void {
    const peer = this.members.get(id);
    if (!peer) return;
    this.members.delete(id);
    debug('nats %s: %s left (%s)', this.self.busName, id, why);
    this.link.left(peer, why);
  }

  /** seen() for a presence message, which also tells the sender's heartbeat interval and what it says of itself. */
  private seenWith(sender: ControlSender, said: Said): void {
    if (said.flavor !== this.flavor && sender.id !== this.self.id) return this.refuse(sender, said.flavor);
    const peer = this.seen(sender.id, sender.epoch);
    if (!peer) return;
    if (sender.heartbeatInterval !== undefined) peer.interval = sender.heartbeatInterval;
    this.hooks.heard?.(peer.id, said.extra);
  }

  /** A member of this bus on another transport: never a member here (its incarnation counts as over). */
  private refuse(sender: ControlSender, flavor: string): void {
    if (this.deadEpochs.get(sender.id) === sender.epoch) return;
    this.deadEpochs.set(sender.id, sender.epoch);
    if (this.members.get(sender.id)?.epoch === sender.epoch) this.remove(sender.id, `on transport ${flavor}`);
    debug('nats %s: refused %s (transport %s)', this.self.busName, sender.id, flavor);
    this.link.report(otherTransport(sender.id, this.self.busName, flavor, this.flavor));
  }

  private duplicateSeen(): void {
    if (this.state === 'joining') {
      this.lostClaim ??= 'a live member on the NATS server';
      return;
    }
    if (this.duplicateReported) return;
    this.duplicateReported = true;
    this.link.report(new ShmbusError('ERR_SHMBUS_DUPLICATE_ID', `another process is using this member's id ${show(this.self.id)} on bus ${show(this.self.busName)} (seen after a reconnect)`));
  }

  /** Another process wants this member's id while this one is joining: the lower instance wins. */
  private contest(sender: ControlSender): void {
    if (this.state === 'joining' && sender.instance !== undefined && sender.instance < this.self.instance) {
      this.lostClaim ??= 'another process that is opening it now';
    }
    // A member: the other process hears 'taken' or 'here' from it.
  }

  private isOther(sender: ControlSender): boolean {
    return sender.id === this.self.id && sender.epoch !== this.self.epoch;
  }

  // -------------------------------------------------------------------------------------------
  // Messages

  /** A message on the presence subject. */
  onPresence({ message, sender }: ReceivedControl): void {
    if (this.state === 'closed') return;
    switch (message.kind) {
      case 'query':
        // A member joining (or one back after a reconnect) asks who is here.
        if (this.isOther(sender)) this.contest(sender);
        if (this.state === 'member' || this.state === 'joining') {
          this.link.publish(message.replyTo, { kind: 'here', member: this.state === 'member', ...this.said() });
        }
        if (message.rejoin) this.seenWith(sender, message);
        return;
      case 'hello':
      case 'heartbeat':
        this.seenWith(sender, message);
        return;
      case 'bye': {
        const peer = this.members.get(sender.id);
        if (peer && peer.epoch === sender.epoch) {
          this.deadEpochs.set(sender.id, sender.epoch);
          this.remove(sender.id, 'closed');
        }
        return;
      }
    }
  }

  /** A claim of this member's id, on its member subject; answered on `reply`. */
  onClaim(sender: ControlSender, reply: string | undefined): void {
    if (!this.isOther(sender)) return;
    this.contest(sender);
    if (reply) this.link.publish(reply, { kind: this.state === 'member' ? 'taken' : 'joining' });
  }

  /** A "no responders" status on the inbox (nobody took what went to `subject`). */
  onNoResponders(subject: string): void {
    if (this.state === 'closed') return;
    const part = this.subjects.inboxPart(subject);
    if (!part) return;
    if ('claim' in part) return this.claimAnswer?.('none');
    if (!('gone' in part)) return;
    // A frame or probe to a member found nobody listening: its connection is gone. Right after
    // this member's own reconnect (a server restart), others may just not be back yet: then only
    // the presence expiry counts.
    if (Date.now() - this.reconnectedAt < this.tune.presenceTimeout) return;
    const id = tokenId(part.gone.token);
    const peer = id === undefined ? undefined : this.members.get(id);
    if (peer && String(peer.epoch) === part.gone.epoch) this.remove(peer.id, 'no responders');
  }

  /** A control message on the inbox: an answer to this member's claim or query. */
  onInbox(subject: string, { message, sender }: ReceivedControl): void {
    if (this.state === 'closed') return;
    const part = this.subjects.inboxPart(subject);
    if (!part) return;
    if ('claim' in part) {
      if (this.isOther(sender) && (message.kind === 'taken' || message.kind === 'joining')) {
        this.claimAnswer?.({ kind: message.kind, instance: sender.instance });
      }
      return;
    }
    if (!('query' in part) || message.kind !== 'here') return;
    if (sender.id === this.self.id) {
      if (sender.epoch === this.self.epoch) return;
      if (message.member) this.duplicateSeen();
      else this.contest(sender);
      return;
    }
    if (message.member) this.seenWith(sender, message);
  }

  // -------------------------------------------------------------------------------------------
  // The sweep: expiry, and the transport's own checks

  private get sweepPeriod(): number {
    return Math.min(SWEEP_MS, this.tune.heartbeatInterval / 2);
  }

  private sweep(): void {
    if (this.state !== 'member') return;
    const now = Date.now();
    const period = this.sweepPeriod;
    const lag = now - this.lastSweep - period;
    this.lastSweep = now;
    if (lag > period) {
      // This process was busy: what others sent meanwhile is still unread. Don't count that time.
      for (const peer of this.members.values()) peer.lastSeen += lag;
      return;
    }
    for (const peer of [...this.members.values()]) {
      if (now - peer.lastSeen > Math.max(this.tune.presenceTimeout, 2.5 * peer.interval)) {
        this.remove(peer.id, `not heard from for ${now - peer.lastSeen} ms`);
        continue;
      }
      this.link.sweep(peer, now);
    }
  }
}
